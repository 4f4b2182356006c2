import pytest

from filestore import ids
from filestore.errors import NotFound


def test_round_trip_and_shape() -> None:
    seen = set()
    for _ in range(200):
        raw = ids.new_file_id()
        text = ids.to_text(raw)
        assert len(raw) == 16 and len(text) == 22
        assert ids.from_text(text) == raw
        assert ids.blob_name(raw) == raw.hex()
        seen.add(text)
    assert len(seen) == 200


@pytest.mark.parametrize(
    "text",
    [
        "",
        "short",
        "a" * 23,
        "../../../etc/passwd...",
        "AAAAAAAAAAAAAAAAAAAAA=",
        "AAAAAAAAAAAAAAAAAAAAAB",
    ],
)
def test_malformed_ids_are_not_found(text: str) -> None:
    with pytest.raises(NotFound):
        ids.from_text(text)


def test_no_new_id_begins_with_a_dash() -> None:
    # Without the redraw, 4,096 ids hold about 64 that start with "-"; the
    # chance that none does is (63/64)**4096, below 1e-27.
    texts = [ids.to_text(ids.new_file_id()) for _ in range(4096)]
    assert not [text for text in texts if text.startswith("-")]
    # The other 63 leading characters all still occur (a biased draw would
    # starve some of them).
    assert len({text[0] for text in texts}) == 63


def test_an_id_that_begins_with_a_dash_still_parses() -> None:
    raw = bytes([62 << 2]) + bytes(15)  # six bits of 62, base64url's "-"
    text = ids.to_text(raw)
    assert text.startswith("-")
    assert ids.from_text(text) == raw
