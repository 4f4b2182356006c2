import pytest

from filestore.api.ranges import parse_range
from filestore.errors import RangeNotSatisfiable


@pytest.mark.parametrize(
    ("header", "size", "expected"),
    [
        (None, 100, None),
        ("bytes=0-0", 100, (0, 0)),
        ("bytes=0-99", 100, (0, 99)),
        ("bytes=10-", 100, (10, 99)),
        ("bytes=-10", 100, (90, 99)),
        ("bytes=-1000", 100, (0, 99)),
        ("bytes=50-1000", 100, (50, 99)),
        ("BYTES = 1 - 2", 100, (1, 2)),
        # Not a single well-formed range: ignored, whole file.
        ("bytes=0-1,5-6", 100, None),
        ("items=0-5", 100, None),
        ("bytes=5-1", 100, None),
        ("bytes=-", 100, None),
        ("garbage", 100, None),
    ],
)
def test_parse(header: str | None, size: int, expected: tuple[int, int] | None) -> None:
    assert parse_range(header, size) == expected


@pytest.mark.parametrize(
    ("header", "size"),
    [
        ("bytes=100-", 100),
        ("bytes=100-200", 100),
        ("bytes=-0", 100),
        ("bytes=0-", 0),
        ("bytes=-5", 0),
        ("bytes=9999999999999999999-", 10),
    ],
)
def test_unsatisfiable(header: str, size: int) -> None:
    with pytest.raises(RangeNotSatisfiable) as info:
        parse_range(header, size)
    assert info.value.size == size


@pytest.mark.parametrize("header", ["bytes=-" + "9" * 5000, "bytes=" + "1" * 30 + "-", "bytes=²-3"])
def test_absurd_ranges_are_ignored(header: str) -> None:
    assert parse_range(header, 100) is None
