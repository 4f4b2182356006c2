"""tlog-tiles: paths, widths, and proofs from tiles against merkle.py (which
passes the CT vectors), on many tree sizes including the spec's 70,000."""

from __future__ import annotations

import hashlib
import random
from collections.abc import Sequence

import pytest

from filestore.audit import Frontier, merkle
from filestore.audit.tiles import (
    TILE_WIDTH,
    Tile,
    completed_subtrees,
    consistency_ranges,
    format_index,
    parse_index,
    parse_tile_path,
    partial_tiles,
    perfect_hash,
    range_hashes,
    read_consistency_proof,
    read_frontier,
    read_inclusion_proof,
    read_range_hashes,
    read_root,
    tile_width,
    tiles_for,
)

MAX = 70_001
LEAVES = [hashlib.sha256(i.to_bytes(8, "big")).digest() for i in range(MAX)]


def _levels() -> list[list[bytes]]:
    """Every full-subtree hash, level by level, computed with merkle.root
    alone (an independent way to the same tiles)."""
    levels = [[merkle.leaf_hash(x) for x in LEAVES]]
    span = TILE_WIDTH
    while span <= MAX:
        levels.append([merkle.root(LEAVES[i : i + span]) for i in range(0, MAX - span + 1, span)])
        span *= TILE_WIDTH
    return levels


LEVELS = _levels()


class ListSource:
    """Tiles cut from the precomputed levels; counts what it is asked for."""

    def __init__(self, size: int) -> None:
        self.size = size
        self.reads: list[list[Tile]] = []

    def read_tiles(self, tiles: Sequence[Tile]) -> list[bytes]:
        self.reads.append(list(tiles))
        out = []
        for t in tiles:
            assert 0 < t.width == tile_width(t.level, t.index, self.size)
            out.append(b"".join(LEVELS[t.level][t.first : t.first + t.width]))
        return out


SIZES = sorted(
    {1, 2, 3, 7, 8, 255, 256, 257, 511, 512, 513, 1000, 65535, 65536, 65537, 70_000, MAX}
    | set(random.Random(7).sample(range(1, MAX), 12))
)


def test_the_specs_70000_example() -> None:
    size = 70_000
    assert sum(1 for i in range(300) if tile_width(0, i, size) == 256) == 273
    assert partial_tiles(size) == [Tile(0, 273, 112), Tile(1, 1, 17), Tile(2, 0, 1)]
    assert tile_width(1, 0, size) == 256
    assert tile_width(1, 2, size) == 0 and tile_width(3, 0, size) == 0
    # A tree of 256: a full level-0 tile and a level-1 tile of width 1.
    assert tile_width(0, 0, 256) == 256 and partial_tiles(256) == [Tile(1, 0, 1)]


@pytest.mark.parametrize("size", SIZES)
def test_root_and_frontier_match_merkle(size: int) -> None:
    source = ListSource(size)
    assert read_root(size, source) == merkle.root(LEAVES[:size])
    assert read_frontier(size, source) == Frontier.of_leaves(LEAVES[:size]).hashes
    assert len(source.reads) == 2  # one batch each


@pytest.mark.parametrize("size", [s for s in SIZES if s <= 2000] + [65537, 70_000])
def test_inclusion_proofs_match_merkle(size: int) -> None:
    rng = random.Random(size)
    for index in {0, size - 1, size // 2, *rng.sample(range(size), min(size, 6))}:
        source = ListSource(size)
        proof = read_inclusion_proof(index, size, source)
        assert proof == merkle.inclusion_proof(index, LEAVES[:size])
        merkle.verify_inclusion(LEAVES[index], index, size, proof, merkle.root(LEAVES[:size]))
        # O(log n) reads: one batch, at most two tiles per level.
        batch = source.reads[0] if size > 1 else []
        assert len(source.reads) == (1 if size > 1 else 0)
        assert len(batch) <= 2 * len({t.level for t in batch})


@pytest.mark.parametrize("size", [s for s in SIZES if s <= 2000] + [65537, 70_000])
def test_consistency_proofs_match_merkle(size: int) -> None:
    rng = random.Random(-size)
    for old in {0, 1, size - 1, size, *rng.sample(range(size + 1), min(size, 6))}:
        if old < 0:
            continue
        proof = read_consistency_proof(old, size, ListSource(size))
        assert proof == merkle.consistency_proof(old, LEAVES[:size])
        merkle.verify_consistency(
            old, size, merkle.root(LEAVES[:old]), merkle.root(LEAVES[:size]), proof
        )


def test_any_range_root() -> None:
    """MTH of arbitrary ranges, aligned or not, equals merkle.root of the slice."""
    size = 70_000
    rng = random.Random(3)
    ranges = [(0, 0), (5, 6), (3, 900), (256, 512), (1000, 69_999), (65_536, 70_000)]
    ranges += [tuple(sorted(rng.sample(range(size + 1), 2))) for _ in range(10)]
    got = read_range_hashes(ranges, size, ListSource(size))
    assert got == [merkle.root(LEAVES[lo:hi]) for lo, hi in ranges]


def test_range_hashes_refuse_missing_or_short_tiles() -> None:
    size = 300
    needed = tiles_for([(0, size)], size)
    # The first 256 leaves are one hash of the level-1 tile.
    assert needed == [Tile(0, 1, 44), Tile(1, 0, 1)]
    data = dict(zip(needed, ListSource(size).read_tiles(needed), strict=True))
    with pytest.raises(ValueError, match="is needed"):
        range_hashes([(0, size)], size, {needed[0]: data[needed[0]]})
    with pytest.raises(ValueError, match="bytes"):
        range_hashes([(0, size)], size, {**data, needed[0]: data[needed[0]][:-1]})
    with pytest.raises(ValueError):
        tiles_for([(0, size + 1)], size)
    with pytest.raises(ValueError):
        consistency_ranges(5, 4)


def test_completed_subtrees_are_what_tiles_hold() -> None:
    assert list(completed_subtrees(255)) == []
    assert list(completed_subtrees(256)) == [(1, 0)]
    assert list(completed_subtrees(512)) == [(1, 1)]
    assert list(completed_subtrees(65536)) == [(1, 255), (2, 0)]
    for level, index in completed_subtrees(65536):
        span = TILE_WIDTH**level
        assert LEVELS[level][index] == merkle.root(LEAVES[index * span : (index + 1) * span])
    assert perfect_hash(LEVELS[1][:256]) == LEVELS[2][0]


@pytest.mark.parametrize(
    ("index", "text"),
    [(0, "000"), (67, "067"), (1000, "x001/000"), (1_234_067, "x001/x234/067")],
)
def test_index_paths_round_trip(index: int, text: str) -> None:
    assert format_index(index) == text
    assert parse_index(text) == (index, 256)
    assert parse_index(text + ".p/5") == (index, 5)
    assert format_index(index, 5) == text + ".p/5"
    assert Tile(3, index, 255).path() == f"3/{text}.p/255"


@pytest.mark.parametrize(
    "text",
    [
        "67",
        "0067",
        "x000/067",
        "001/067",
        "x001/x234",
        "x1/067",
        "067.p/0",
        "067.p/256",
        "067.p/05",
        "067.p/",
        "067.p",
        "067/",
        "",
        "x001/x001/x001/x001/x001/x001/x001/000",
        "x999/x999/x999/x999/x999/x999/999",
        "٠٦٧",
    ],
)
def test_malformed_indexes_are_refused(text: str) -> None:
    with pytest.raises(ValueError):
        parse_index(text)


def test_tile_paths() -> None:
    assert parse_tile_path("0/x001/x234/067").tile == Tile(0, 1_234_067, 256)
    assert parse_tile_path("63/000.p/1").tile == Tile(63, 0, 1)
    path = parse_tile_path("entries/001.p/9", bundles=("entries", "records"))
    assert (path.kind, path.tile) == ("entries", Tile(0, 1, 9))
    assert parse_tile_path("records/000", bundles=("entries", "records")).kind == "records"
    for bad in ("64/000", "01/000", "-1/000", "records/000", "1", "x/000", "1/"):
        with pytest.raises(ValueError):
            parse_tile_path(bad)
