"""RFC 6962 / RFC 9162 Merkle trees over the records' hashes.

The log's tree has one leaf per record, in ``seq`` order; a leaf's input is
the 32 raw bytes of the record's ``hash``. Hashing is RFC 6962's:

* leaf hash ``SHA-256(0x00 ‖ leaf)``, node hash ``SHA-256(0x01 ‖ left ‖ right)``,
* the tree of ``n > 1`` leaves splits at ``k``, the largest power of two
  smaller than ``n``: ``MTH(D[n]) = node(MTH(D[0:k]), MTH(D[k:n]))``,
* the empty tree's root is ``SHA-256("")``.

Proof generation follows RFC 6962 §2.1.1 and §2.1.2 (``PATH``, ``SUBPROOF``) and
costs O(n) hashes (it rebuilds the subtrees it needs from the leaves);
verification follows RFC 9162 §2.1.3.2 and §2.1.4.2 and costs O(log n).
Following ``cryptography``'s rule, ``verify_*`` raise
:class:`~filestore.audit.errors.AuditVerificationError` and never return a
bool. Functions here accept any bytes as leaf inputs, so the RFC's own test
data can be used.
"""

from __future__ import annotations

import hashlib
import hmac
from collections.abc import Sequence

from filestore.audit.errors import AuditVerificationError

__all__ = [
    "EMPTY_ROOT",
    "consistency_proof",
    "inclusion_proof",
    "leaf_hash",
    "node_hash",
    "root",
    "verify_consistency",
    "verify_inclusion",
]

EMPTY_ROOT = hashlib.sha256(b"").digest()


def leaf_hash(leaf: bytes) -> bytes:
    return hashlib.sha256(b"\x00" + leaf).digest()


def node_hash(left: bytes, right: bytes) -> bytes:
    return hashlib.sha256(b"\x01" + left + right).digest()


def _split(n: int) -> int:
    """The largest power of two smaller than ``n`` (n >= 2)."""
    return 1 << ((n - 1).bit_length() - 1)


def _mth(hashes: Sequence[bytes], lo: int, hi: int) -> bytes:
    """Root of the subtree over leaf hashes ``hashes[lo:hi]`` (hi > lo)."""
    n = hi - lo
    if n == 1:
        return hashes[lo]
    k = _split(n)
    return node_hash(_mth(hashes, lo, lo + k), _mth(hashes, lo + k, hi))


def root(leaves: Sequence[bytes]) -> bytes:
    """The Merkle tree hash of ``leaves`` (leaf inputs, not leaf hashes)."""
    if not leaves:
        return EMPTY_ROOT
    hashes = [leaf_hash(x) for x in leaves]
    return _mth(hashes, 0, len(hashes))


def inclusion_proof(index: int, leaves: Sequence[bytes]) -> list[bytes]:
    """The audit path of leaf ``index`` in the tree of ``leaves`` (RFC 6962 PATH).

    ValueError if ``index`` is not a leaf of that tree.
    """
    if not 0 <= index < len(leaves):
        raise ValueError(f"leaf index {index} is outside a tree of {len(leaves)} leaves")
    hashes = [leaf_hash(x) for x in leaves]
    path: list[bytes] = []
    lo, hi, m = 0, len(hashes), index
    # Walk down from the root; siblings are collected top-down, the proof
    # lists them bottom-up.
    while hi - lo > 1:
        k = _split(hi - lo)
        if m < k:
            path.append(_mth(hashes, lo + k, hi))
            hi = lo + k
        else:
            path.append(_mth(hashes, lo, lo + k))
            lo, m = lo + k, m - k
    path.reverse()
    return path


def consistency_proof(old_size: int, leaves: Sequence[bytes]) -> list[bytes]:
    """Proof that the first ``old_size`` leaves form a prefix of the tree of
    ``leaves`` (RFC 6962 PROOF). Empty when ``old_size`` is 0 or the whole tree.

    ValueError unless ``0 <= old_size <= len(leaves)``.
    """
    n = len(leaves)
    if not 0 <= old_size <= n:
        raise ValueError(f"old size {old_size} is outside 0..{n}")
    if old_size in (0, n):
        return []
    hashes = [leaf_hash(x) for x in leaves]
    proof: list[bytes] = []
    lo, hi, m, whole = 0, n, old_size, True
    while m != hi - lo:
        k = _split(hi - lo)
        if m <= k:
            proof.append(_mth(hashes, lo + k, hi))
            hi = lo + k
        else:
            proof.append(_mth(hashes, lo, lo + k))
            lo, m, whole = lo + k, m - k, False
    if not whole:
        proof.append(_mth(hashes, lo, hi))
    proof.reverse()
    return proof


def _check_hashes(*values: bytes) -> None:
    for v in values:
        if not isinstance(v, bytes) or len(v) != 32:
            raise AuditVerificationError("a proof hash or root is not 32 bytes")


def verify_inclusion(
    leaf: bytes, index: int, size: int, proof: Sequence[bytes], root_hash: bytes
) -> None:
    """Check that ``leaf`` is leaf ``index`` of the tree of ``size`` leaves
    whose root is ``root_hash``. Raises AuditVerificationError if not."""
    _check_hashes(root_hash, *proof)
    if not 0 <= index < size:
        raise AuditVerificationError(f"leaf index {index} is outside a tree of size {size}")
    fn, sn = index, size - 1
    r = leaf_hash(leaf)
    for p in proof:
        if sn == 0:
            raise AuditVerificationError("inclusion proof is too long")
        if fn & 1 or fn == sn:
            r = node_hash(p, r)
            if not fn & 1:
                while fn and not fn & 1:
                    fn >>= 1
                    sn >>= 1
        else:
            r = node_hash(r, p)
        fn >>= 1
        sn >>= 1
    if sn != 0:
        raise AuditVerificationError("inclusion proof is too short")
    if not hmac.compare_digest(r, root_hash):
        raise AuditVerificationError("inclusion proof does not lead to the root")


def verify_consistency(
    old_size: int, new_size: int, old_root: bytes, new_root: bytes, proof: Sequence[bytes]
) -> None:
    """Check that the tree of ``old_size`` leaves with root ``old_root`` is a
    prefix of the tree of ``new_size`` leaves with root ``new_root``.
    Raises AuditVerificationError if not."""
    _check_hashes(old_root, new_root, *proof)
    if not 0 <= old_size <= new_size:
        raise AuditVerificationError(f"sizes {old_size} -> {new_size} cannot be consistent")
    if old_size == 0:
        # Every tree extends the empty one; RFC 9162 defines no proof for it.
        if proof:
            raise AuditVerificationError("consistency proof from the empty tree must be empty")
        if not hmac.compare_digest(old_root, EMPTY_ROOT):
            raise AuditVerificationError("the root of the empty tree is wrong")
        return
    if old_size == new_size:
        if proof:
            raise AuditVerificationError("consistency proof between equal sizes must be empty")
        if not hmac.compare_digest(old_root, new_root):
            raise AuditVerificationError("roots of the same tree size differ")
        return
    if not proof:
        raise AuditVerificationError("consistency proof is empty")
    path = list(proof)
    if old_size & (old_size - 1) == 0:  # a power of two: the old root is a node
        path.insert(0, old_root)
    fn, sn = old_size - 1, new_size - 1
    while fn & 1:
        fn >>= 1
        sn >>= 1
    fr = sr = path[0]
    for c in path[1:]:
        if sn == 0:
            raise AuditVerificationError("consistency proof is too long")
        if fn & 1 or fn == sn:
            fr = node_hash(c, fr)
            sr = node_hash(c, sr)
            if not fn & 1:
                while fn and not fn & 1:
                    fn >>= 1
                    sn >>= 1
        else:
            sr = node_hash(sr, c)
        fn >>= 1
        sn >>= 1
    if sn != 0:
        raise AuditVerificationError("consistency proof is too short")
    if not hmac.compare_digest(fr, old_root):
        raise AuditVerificationError("consistency proof does not lead to the old root")
    if not hmac.compare_digest(sr, new_root):
        raise AuditVerificationError("consistency proof does not lead to the new root")
