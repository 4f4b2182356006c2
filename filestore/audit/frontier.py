"""The Merkle frontier: the tree's root at every size, streaming, in O(log n).

An RFC 6962 tree of ``n`` leaves is built from the perfect subtrees given by
the binary digits of ``n``, largest first: for ``n = 13 = 8 + 4 + 1`` the
leaves ``[0, 8)``, ``[8, 12)`` and ``[12, 13)``, and its root is
``node(h8, node(h4, h1))`` — the subtree hashes folded from the right. Those
subtree hashes are the *frontier* (a "compact range" starting at 0).
Appending a leaf merges equal-sized subtrees like a binary counter.

This is what lets an export be checked without the records before it: the
export's header carries the frontier of the records before the slice, the
verifier appends the slice's records one by one and compares
:meth:`Frontier.root` with every signed checkpoint it meets.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

from filestore.audit.errors import AuditVerificationError
from filestore.audit.merkle import EMPTY_ROOT, leaf_hash, node_hash

__all__ = ["Frontier"]


class Frontier:
    """The perfect-subtree hashes covering leaves ``[0, size)``."""

    __slots__ = ("_hashes", "_size")

    def __init__(self) -> None:
        self._size = 0
        # (height, hash) from the largest (leftmost) subtree to the smallest.
        self._hashes: list[tuple[int, bytes]] = []

    @classmethod
    def of_leaves(cls, leaves: Iterable[bytes]) -> Frontier:
        """The frontier after appending every leaf input in ``leaves``."""
        f = cls()
        for leaf in leaves:
            f.append(leaf)
        return f

    @classmethod
    def from_hashes(cls, size: int, hashes: Sequence[bytes]) -> Frontier:
        """Rebuild a frontier from :attr:`hashes` of a tree of ``size`` leaves.

        AuditVerificationError if the number or length of the hashes cannot
        be a frontier of that size (their values are checked only later, by
        the roots they lead to).
        """
        if size < 0 or len(hashes) != size.bit_count():
            raise AuditVerificationError(
                f"a frontier of {size} leaves has {max(size, 0).bit_count()} hashes, "
                f"not {len(hashes)}"
            )
        if any(not isinstance(h, bytes) or len(h) != 32 for h in hashes):
            raise AuditVerificationError("a frontier hash is not 32 bytes")
        heights = [b for b in range(size.bit_length() - 1, -1, -1) if size >> b & 1]
        f = cls()
        f._size = size
        f._hashes = list(zip(heights, hashes, strict=True))
        return f

    @property
    def size(self) -> int:
        return self._size

    @property
    def hashes(self) -> list[bytes]:
        """The subtree hashes, largest subtree first (``size.bit_count()`` of them)."""
        return [h for _, h in self._hashes]

    def append(self, leaf: bytes) -> None:
        """Add the leaf input ``leaf`` as leaf number ``size``."""
        height, h = 0, leaf_hash(leaf)
        while self._hashes and self._hashes[-1][0] == height:
            _, left = self._hashes.pop()
            h = node_hash(left, h)
            height += 1
        self._hashes.append((height, h))
        self._size += 1

    def root(self) -> bytes:
        """The RFC 6962 root of the tree of the first ``size`` leaves."""
        if not self._hashes:
            return EMPTY_ROOT
        r = self._hashes[-1][1]
        for _, h in reversed(self._hashes[:-1]):
            r = node_hash(h, r)
        return r
