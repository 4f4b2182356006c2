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
