"""The log's Merkle tree as C2SP tlog-tiles: paths, widths, and proofs from tiles.

A *tile* is up to 256 consecutive hashes at one *level* of the tree. At level
0 they are leaf hashes; at level ``l >= 1`` hash ``i`` of tile ``n`` is the
root of the perfect subtree over leaves ``[(256n + i)·256^l, (256n + i + 1)·256^l)``.
A tile of 256 hashes is *full* and never changes; the rightmost tile of a
level may be *partial* (1..255 hashes) for a given tree size.

Every subtree an RFC 6962 proof names is aligned: a perfect subtree of
``2^h`` leaves lies inside one tile at level ``h // 8`` (``2^(h mod 8)``
consecutive hashes of it), and any other range splits RFC-6962-style into
such pieces. So the root of any range, an inclusion or consistency proof and
the frontier at any size need at most two tiles per level: O(log n) reads,
fetched in one batch.

The work is split in two so that a caller with an asynchronous store (one
transaction per batch) and a caller with a synchronous one share the code:
:func:`tiles_for` says which tiles a list of ranges needs, and
:func:`range_hashes` computes the ranges' hashes from those tiles. The
``*_ranges`` functions name the ranges of each kind of proof; the
convenience functions at the end run both steps through a
:class:`TileSource`.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Protocol

from filestore.audit.merkle import EMPTY_ROOT, leaf_hash, node_hash

__all__ = [
    "HASH_SIZE",
    "MAX_LEVEL",
    "TILE_WIDTH",
    "Tile",
    "TilePath",
    "TileSource",
    "completed_subtrees",
    "consistency_ranges",
    "format_index",
    "frontier_ranges",
    "inclusion_ranges",
    "leaf_tile",
    "parse_index",
    "parse_tile_path",
    "partial_tiles",
    "perfect_hash",
    "range_hashes",
    "read_consistency_proof",
    "read_frontier",
    "read_inclusion_proof",
    "read_range_hashes",
    "read_root",
    "tile_width",
    "tiles_for",
]

TILE_WIDTH = 256
HASH_SIZE = 32
#: The highest level a tile path may name (the spec's limit).
MAX_LEVEL = 63
#: Tile indexes fit in 64 bits (a tree holds fewer than 2^64 leaves).
_MAX_INDEX = (1 << 64) - 1
_LEVEL = re.compile(r"^(0|[1-9][0-9]?)$")
_WIDTH = re.compile(r"^[1-9][0-9]{0,2}$")
_INNER = re.compile(r"^x[0-9]{3}$")
_LAST = re.compile(r"^[0-9]{3}$")


@dataclass(frozen=True, order=True)
class Tile:
    """Tile ``index`` at ``level`` holding its first ``width`` hashes (1..256)."""

    level: int
    index: int
    width: int

    def __post_init__(self) -> None:
        if not 0 <= self.level <= MAX_LEVEL:
            raise ValueError(f"a tile level is 0..{MAX_LEVEL}")
        if not 0 <= self.index <= _MAX_INDEX:
            raise ValueError("a tile index is a non-negative 64-bit integer")
        if not 1 <= self.width <= TILE_WIDTH:
            raise ValueError(f"a tile holds 1..{TILE_WIDTH} hashes")

    @property
    def full(self) -> bool:
        return self.width == TILE_WIDTH

    @property
    def first(self) -> int:
        """Index, within its level, of the tile's first hash."""
        return self.index * TILE_WIDTH

    def path(self) -> str:
        """``<L>/<N>[.p/<W>]``, the path under ``tile/``."""
        return f"{self.level}/{format_index(self.index, self.width)}"


def format_index(index: int, width: int = TILE_WIDTH) -> str:
    """``1234067`` → ``x001/x234/067``, with ``.p/<W>`` for a partial tile."""
    parts = [f"{index % 1000:03d}"]
    index //= 1000
    while index:
        parts.append(f"x{index % 1000:03d}")
        index //= 1000
    text = "/".join(reversed(parts))
    return text if width == TILE_WIDTH else f"{text}.p/{width}"


def parse_index(text: str) -> tuple[int, int]:
    """``x001/x234/067[.p/W]`` → (index, width); ValueError names what is wrong.

    Strict, so that one tile has one path: three digits per element, ``x``
    on all but the last, no leading ``x000`` element, a width of 1..255
    without leading zeros.
    """
    parts = text.split("/")
    width = TILE_WIDTH
    if len(parts) >= 2 and parts[-2].endswith(".p"):
        raw_width = parts.pop()
        parts[-1] = parts[-1][: -len(".p")]
        if not _WIDTH.match(raw_width) or not 1 <= int(raw_width) < TILE_WIDTH:
            raise ValueError("a partial tile's width is 1..255, without leading zeros")
        width = int(raw_width)
    if len(parts) > 7:
        raise ValueError("a tile index has at most 7 path elements")
    if not _LAST.match(parts[-1]) or not all(_INNER.match(p) for p in parts[:-1]):
        raise ValueError(
            "a tile index is 3-digit path elements, all but the last starting with 'x'"
        )
    if len(parts) > 1 and parts[0] == "x000":
        raise ValueError("a tile index has no leading zero elements")
    index = 0
    for part in parts:
        index = index * 1000 + int(part.lstrip("x"))
    if index > _MAX_INDEX:
        raise ValueError("a tile index is a 64-bit integer")
    return index, width


@dataclass(frozen=True)
class TilePath:
    """A parsed request path under ``tile/``: a hash tile (``kind`` ``hash``,
    with its level), or a bundle (``entries`` or ``records``, level 0)."""

    kind: str
    tile: Tile


def parse_tile_path(text: str, bundles: Sequence[str] = ("entries",)) -> TilePath:
    """Parse ``<L>/<N>[.p/<W>]`` or ``<bundle>/<N>[.p/<W>]``; ValueError if malformed."""
    head, sep, rest = text.partition("/")
    if not sep:
        raise ValueError("a tile path is <level>/<index>")
    if head in bundles:
        kind, level = head, 0
    elif _LEVEL.match(head) and int(head) <= MAX_LEVEL:
        kind, level = "hash", int(head)
    else:
        raise ValueError(f"a tile level is 0..{MAX_LEVEL} without leading zeros")
    index, width = parse_index(rest)
    return TilePath(kind, Tile(level, index, width))


def tile_width(level: int, index: int, size: int) -> int:
    """How many hashes tile ``index`` at ``level`` holds in a tree of ``size``
    leaves (0: the tile does not exist at that size)."""
    entries = size >> (8 * level)
    if index < entries // TILE_WIDTH:
        return TILE_WIDTH
    if index == entries // TILE_WIDTH:
        return entries % TILE_WIDTH
    return 0


def partial_tiles(size: int) -> list[Tile]:
    """The partial tiles of a tree of ``size`` leaves, lowest level first
    (those a checkpoint of that size obliges the log to serve)."""
    out = []
    level = 0
    while size >> (8 * level):
        entries = size >> (8 * level)
        if entries % TILE_WIDTH:
            out.append(Tile(level, entries // TILE_WIDTH, entries % TILE_WIDTH))
        level += 1
    return out


def completed_subtrees(size: int) -> Iterator[tuple[int, int]]:
    """The (level, index) of the level-1-and-up hashes that become complete
    when the tree grows from ``size - 1`` to ``size`` leaves, lowest first.
    Each is the root of the ``256^level`` leaves ending at leaf ``size - 1``."""
    level = 1
    while size and size % (TILE_WIDTH**level) == 0:
        yield level, size // (TILE_WIDTH**level) - 1
        level += 1


def perfect_hash(hashes: Sequence[bytes]) -> bytes:
    """Root of the perfect subtree whose bottom row is ``hashes`` (a power of two of them)."""
    row = list(hashes)
    while len(row) > 1:
        row = [node_hash(row[i], row[i + 1]) for i in range(0, len(row), 2)]
    return row[0]


def _split(n: int) -> int:
    return 1 << ((n - 1).bit_length() - 1)


def _walk(lo: int, hi: int, piece: Callable[[int, int, int], bytes | None]) -> bytes | None:
    """MTH of leaves ``[lo, hi)`` (``hi > lo``) built from aligned perfect
    pieces: ``piece(level, first, count)`` gives the root of ``count``
    consecutive hashes at ``level`` from ``first`` (or None when only
    planning)."""
    n = hi - lo
    if n & (n - 1) == 0 and lo % n == 0:
        height = n.bit_length() - 1
        level = height // 8
        return piece(level, lo >> (8 * level), 1 << (height % 8))
    k = _split(n)
    left = _walk(lo, lo + k, piece)
    right = _walk(lo + k, hi, piece)
    return None if left is None or right is None else node_hash(left, right)


def _check_ranges(ranges: Sequence[tuple[int, int]], size: int) -> None:
    for lo, hi in ranges:
        if not 0 <= lo <= hi <= size or (lo == hi and lo != 0):
            raise ValueError(f"range [{lo}, {hi}) is not a range of a tree of {size} leaves")


def tiles_for(ranges: Sequence[tuple[int, int]], size: int) -> list[Tile]:
    """The tiles (at their widths for a tree of ``size`` leaves) from which
    :func:`range_hashes` computes the roots of ``ranges``, sorted, each once."""
    _check_ranges(ranges, size)
    needed: set[Tile] = set()

    def plan(level: int, first: int, count: int) -> None:
        index = first // TILE_WIDTH
        needed.add(Tile(level, index, tile_width(level, index, size)))

    for lo, hi in ranges:
        if hi > lo:
            _walk(lo, hi, plan)
    return sorted(needed)


def range_hashes(
    ranges: Sequence[tuple[int, int]], size: int, tiles: Mapping[Tile, bytes]
) -> list[bytes]:
    """The Merkle tree hash of each range ``[lo, hi)`` (the empty range
    ``[0, 0)`` has the empty tree's root), from the tiles
    :func:`tiles_for` named. ValueError if a tile is missing or the wrong length."""
    _check_ranges(ranges, size)
    rows: dict[Tile, bytes] = {}
    for tile, data in tiles.items():
        if len(data) != tile.width * HASH_SIZE:
            raise ValueError(f"tile {tile.path()} is {len(data)} bytes, not {tile.width * 32}")
        rows[tile] = data

    def piece(level: int, first: int, count: int) -> bytes:
        index = first // TILE_WIDTH
        tile = Tile(level, index, tile_width(level, index, size))
        data = rows.get(tile)
        if data is None:
            raise ValueError(f"tile {tile.path()} is needed")
        at = (first % TILE_WIDTH) * HASH_SIZE
        return perfect_hash(
            [data[at + i * HASH_SIZE : at + (i + 1) * HASH_SIZE] for i in range(count)]
        )

    out = []
    for lo, hi in ranges:
        value = EMPTY_ROOT if hi == lo else _walk(lo, hi, piece)
        assert value is not None
        out.append(value)
    return out


def inclusion_ranges(index: int, size: int) -> list[tuple[int, int]]:
    """The subtrees whose hashes are RFC 6962 ``PATH(index, D[size])``, bottom-up."""
    if not 0 <= index < size:
        raise ValueError(f"leaf index {index} is outside a tree of {size} leaves")
    out: list[tuple[int, int]] = []
    lo, hi = 0, size
    while hi - lo > 1:
        k = _split(hi - lo)
        if index < lo + k:
            out.append((lo + k, hi))
            hi = lo + k
        else:
            out.append((lo, lo + k))
            lo += k
    out.reverse()
    return out


def consistency_ranges(old_size: int, size: int) -> list[tuple[int, int]]:
    """The subtrees whose hashes are RFC 6962 ``PROOF(old_size, D[size])``, in
    proof order (empty when ``old_size`` is 0 or ``size``)."""
    if not 0 <= old_size <= size:
        raise ValueError(f"old size {old_size} is outside 0..{size}")
    if old_size in (0, size):
        return []
    out: list[tuple[int, int]] = []
    lo, hi, m, whole = 0, size, old_size, True
    while m != hi - lo:
        k = _split(hi - lo)
        if m <= k:
            out.append((lo + k, hi))
            hi = lo + k
        else:
            out.append((lo, lo + k))
            lo, m, whole = lo + k, m - k, False
    if not whole:
        out.append((lo, hi))
    out.reverse()
    return out


def frontier_ranges(size: int) -> list[tuple[int, int]]:
    """The perfect subtrees covering leaves ``[0, size)``, largest first (the
    frontier of :class:`~filestore.audit.frontier.Frontier`)."""
    out = []
    lo = 0
    for bit in range(size.bit_length() - 1, -1, -1):
        if size >> bit & 1:
            out.append((lo, lo + (1 << bit)))
            lo += 1 << bit
    return out


class TileSource(Protocol):
    """Where a synchronous caller reads tiles from (a store, an HTTP mirror,
    a list of leaves in a test)."""

    def read_tiles(self, tiles: Sequence[Tile]) -> Sequence[bytes]:
        """Each tile's bytes (``width`` hashes of 32 bytes), in order."""


def read_range_hashes(
    ranges: Sequence[tuple[int, int]], size: int, source: TileSource
) -> list[bytes]:
    """:func:`range_hashes` of ``ranges``, reading the tiles in one batch."""
    needed = tiles_for(ranges, size)
    data = source.read_tiles(needed) if needed else []
    if len(data) != len(needed):
        raise ValueError("the tile source answered for a different number of tiles")
    return range_hashes(ranges, size, dict(zip(needed, data, strict=True)))


def read_root(size: int, source: TileSource) -> bytes:
    """The root of the tree of ``size`` leaves."""
    return read_range_hashes([(0, size)], size, source)[0]


def read_inclusion_proof(index: int, size: int, source: TileSource) -> list[bytes]:
    """RFC 6962 ``PATH(index, D[size])``, as :func:`.merkle.inclusion_proof` gives it."""
    return read_range_hashes(inclusion_ranges(index, size), size, source)


def read_consistency_proof(old_size: int, size: int, source: TileSource) -> list[bytes]:
    """RFC 6962 ``PROOF(old_size, D[size])``, as :func:`.merkle.consistency_proof` gives it."""
    return read_range_hashes(consistency_ranges(old_size, size), size, source)


def read_frontier(size: int, source: TileSource) -> list[bytes]:
    """The frontier hashes of a tree of ``size`` leaves, largest subtree first."""
    return read_range_hashes(frontier_ranges(size), size, source)


def leaf_tile(raw_hashes: Sequence[bytes]) -> bytes:
    """A level-0 tile from the leaf inputs (the records' raw hashes) it covers."""
    return b"".join(leaf_hash(h) for h in raw_hashes)
