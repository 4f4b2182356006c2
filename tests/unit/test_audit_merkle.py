"""RFC 6962 Merkle tree: reference vectors, an independent recursive model,
every proof of small trees, and proofs that must fail."""

from __future__ import annotations

import hashlib
from collections.abc import Sequence

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from filestore.audit import AuditVerificationError, Frontier
from filestore.audit.merkle import (
    EMPTY_ROOT,
    consistency_proof,
    inclusion_proof,
    leaf_hash,
    node_hash,
    root,
    verify_consistency,
    verify_inclusion,
)

# The classic Certificate Transparency test data (certificate-transparency
# merkle_tree_test.cc, also transparency-dev/merkle testonly/constants.go):
# eight leaf inputs and the roots of the trees of their first 0..8.
CT_LEAVES = [
    bytes.fromhex(h)
    for h in (
        "",
        "00",
        "10",
        "2021",
        "3031",
        "40414243",
        "5051525354555657",
        "606162636465666768696a6b6c6d6e6f",
    )
]
CT_ROOTS = [
    "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855",
    "6e340b9cffb37a989ca544e6bb780a2c78901d3fb33738768511a30617afa01d",
    "fac54203e7cc696cf0dfcb42c92a1d9dbaf70ad9e621f4bd8d98662f00e3c125",
    "aeb6bcfe274b70a14fb067a5e5578264db0fa9b51af5e0ba159158f329e06e77",
    "d37ee418976dd95753c1c73862b9398fa2a2cf9b4ff0fdfe8b30cd95209614b7",
    "4e3bbb1f7b478dcfe71fb631631519a3bca12c9aefca1612bfce4c13a86264d4",
    "76e67dadbcdf1e10e1b74ddc608abd2f98dfb16fbce75277b5232a127f2087ef",
    "ddb89be403809e325750d3d263cd78929c2942b7942a34b77e122c9594a74c8c",
    "5dc9da79a70659a9ad559cb701ded9a2ab9d823aad2f4960cfe370eff4604328",
]
# (leaf index, tree size, audit path)
CT_INCLUSION = [
    (0, 1, []),
    (0, 2, ["96a296d224f285c67bee93c30f8a309157f0daa35dc5b87e410b78630a09cfc7"]),
    (1, 2, ["6e340b9cffb37a989ca544e6bb780a2c78901d3fb33738768511a30617afa01d"]),
    (2, 3, ["fac54203e7cc696cf0dfcb42c92a1d9dbaf70ad9e621f4bd8d98662f00e3c125"]),
    (
        1,
        5,
        [
            "6e340b9cffb37a989ca544e6bb780a2c78901d3fb33738768511a30617afa01d",
            "5f083f0a1a33ca076a95279832580db3e0ef4584bdff1f54c8a360f50de3031e",
            "bc1a0643b12e4d2d7c77918f44e0f4f79a838b6cf9ec5b5c283e1f4d88599e6b",
        ],
    ),
    (
        0,
        8,
        [
            "96a296d224f285c67bee93c30f8a309157f0daa35dc5b87e410b78630a09cfc7",
            "5f083f0a1a33ca076a95279832580db3e0ef4584bdff1f54c8a360f50de3031e",
            "6b47aaf29ee3c2af9af889bc1fb9254dabd31177f16232dd6aab035ca39bf6e4",
        ],
    ),
    (
        5,
        8,
        [
            "bc1a0643b12e4d2d7c77918f44e0f4f79a838b6cf9ec5b5c283e1f4d88599e6b",
            "ca854ea128ed050b41b35ffc1b87b8eb2bde461e9e3b5596ece6b9d5975a0ae0",
            "d37ee418976dd95753c1c73862b9398fa2a2cf9b4ff0fdfe8b30cd95209614b7",
        ],
    ),
]
# (old size, new size, proof)
CT_CONSISTENCY = [
    (1, 1, []),
    (
        1,
        8,
        [
            "96a296d224f285c67bee93c30f8a309157f0daa35dc5b87e410b78630a09cfc7",
            "5f083f0a1a33ca076a95279832580db3e0ef4584bdff1f54c8a360f50de3031e",
            "6b47aaf29ee3c2af9af889bc1fb9254dabd31177f16232dd6aab035ca39bf6e4",
        ],
    ),
    (
        6,
        8,
        [
            "0ebc5d3437fbe2db158b9f126a1d118e308181031d0a949f8dededebc558ef6a",
            "ca854ea128ed050b41b35ffc1b87b8eb2bde461e9e3b5596ece6b9d5975a0ae0",
            "d37ee418976dd95753c1c73862b9398fa2a2cf9b4ff0fdfe8b30cd95209614b7",
        ],
    ),
    (
        2,
        5,
        [
            "5f083f0a1a33ca076a95279832580db3e0ef4584bdff1f54c8a360f50de3031e",
            "bc1a0643b12e4d2d7c77918f44e0f4f79a838b6cf9ec5b5c283e1f4d88599e6b",
        ],
    ),
]


def _hx(hashes: Sequence[str]) -> list[bytes]:
    return [bytes.fromhex(h) for h in hashes]


# An independent model: RFC 6962 §2.1, §2.1.1 and §2.1.2 transcribed as
# recursion over slices, exactly as the RFC writes them.
def ref_mth(d: Sequence[bytes]) -> bytes:
    if not d:
        return hashlib.sha256(b"").digest()
    if len(d) == 1:
        return hashlib.sha256(b"\x00" + d[0]).digest()
    k = 1
    while k * 2 < len(d):
        k *= 2
    return hashlib.sha256(b"\x01" + ref_mth(d[:k]) + ref_mth(d[k:])).digest()


def ref_path(m: int, d: Sequence[bytes]) -> list[bytes]:
    if len(d) == 1:
        return []
    k = 1
    while k * 2 < len(d):
        k *= 2
    if m < k:
        return [*ref_path(m, d[:k]), ref_mth(d[k:])]
    return [*ref_path(m - k, d[k:]), ref_mth(d[:k])]


def ref_subproof(m: int, d: Sequence[bytes], b: bool) -> list[bytes]:
    if m == len(d):
        return [] if b else [ref_mth(d)]
    k = 1
    while k * 2 < len(d):
        k *= 2
    if m <= k:
        return [*ref_subproof(m, d[:k], b), ref_mth(d[k:])]
    return [*ref_subproof(m - k, d[k:], False), ref_mth(d[:k])]


LEAVES = [hashlib.sha256(i.to_bytes(4, "big")).digest() for i in range(70)]


def test_hasher_vectors() -> None:
    # transparency-dev/merkle rfc6962_test.go
    assert EMPTY_ROOT.hex() == CT_ROOTS[0]
    assert leaf_hash(b"").hex() == CT_ROOTS[1]
    assert leaf_hash(b"L123456").hex() == (
        "395aa064aa4c29f7010acfe3f25db9485bbd4b91897b6ad7ad547639252b4d56"
    )
    assert node_hash(b"N123", b"N456").hex() == (
        "aa217fe888e47007fa15edab33c2b492a722cb106c64667fc2b044444de66bbb"
    )


@pytest.mark.parametrize("size", range(9))
def test_ct_roots(size: int) -> None:
    assert root(CT_LEAVES[:size]).hex() == CT_ROOTS[size]
    assert Frontier.of_leaves(CT_LEAVES[:size]).root().hex() == CT_ROOTS[size]


@pytest.mark.parametrize(("index", "size", "path"), CT_INCLUSION)
def test_ct_inclusion_proofs(index: int, size: int, path: list[str]) -> None:
    assert inclusion_proof(index, CT_LEAVES[:size]) == _hx(path)
    verify_inclusion(CT_LEAVES[index], index, size, _hx(path), bytes.fromhex(CT_ROOTS[size]))


@pytest.mark.parametrize(("old", "new", "proof"), CT_CONSISTENCY)
def test_ct_consistency_proofs(old: int, new: int, proof: list[str]) -> None:
    assert consistency_proof(old, CT_LEAVES[:new]) == _hx(proof)
    verify_consistency(
        old, new, bytes.fromhex(CT_ROOTS[old]), bytes.fromhex(CT_ROOTS[new]), _hx(proof)
    )


def test_roots_match_the_model_and_the_frontier_for_every_size() -> None:
    f = Frontier()
    for n in range(len(LEAVES) + 1):
        assert root(LEAVES[:n]) == ref_mth(LEAVES[:n]) == f.root()
        assert Frontier.from_hashes(n, f.hashes).root() == f.root()
        assert len(f.hashes) == n.bit_count()
        if n < len(LEAVES):
            f.append(LEAVES[n])


def test_every_inclusion_proof_of_trees_up_to_64() -> None:
    for size in range(1, 65):
        tree = LEAVES[:size]
        r = root(tree)
        for index in range(size):
            proof = inclusion_proof(index, tree)
            assert proof == ref_path(index, tree)
            verify_inclusion(tree[index], index, size, proof, r)
            with pytest.raises(AuditVerificationError):
                verify_inclusion(tree[(index + 1) % size] + b"x", index, size, proof, r)
            if size > 1:
                with pytest.raises(AuditVerificationError):
                    verify_inclusion(tree[index], (index + 1) % size, size, proof, r)


def test_every_consistency_proof_up_to_40() -> None:
    roots = [root(LEAVES[:n]) for n in range(41)]
    for new in range(41):
        for old in range(new + 1):
            proof = consistency_proof(old, LEAVES[:new])
            verify_consistency(old, new, roots[old], roots[new], proof)
            if old == new:
                continue
            # A different history of the same old size must not pass.
            with pytest.raises(AuditVerificationError):
                verify_consistency(old, new, leaf_hash(b"fork"), roots[new], proof)
            if old > 0:  # from the empty tree there is no proof to compare
                assert proof == ref_subproof(old, LEAVES[:new], True)
                with pytest.raises(AuditVerificationError):
                    verify_consistency(old, new, roots[old], roots[new - 1], proof)


def _mutations(proof: list[bytes], root_hash: bytes) -> list[list[bytes]]:
    out = [[*proof, root_hash], [root_hash, *proof], [*proof, b"\x00" * 32]]
    if proof:
        out.append(proof[:-1])
        out.append(proof[1:])
        out.append(list(reversed(proof)) if len(proof) > 1 else [proof[0], proof[0]])
    for i in range(len(proof)):
        flipped = bytearray(proof[i])
        flipped[i % 32] ^= 0x08
        out.append([*proof[:i], bytes(flipped), *proof[i + 1 :]])
    return [m for m in out if m != proof]


@settings(max_examples=150, deadline=None, database=None)
@given(st.integers(1, 64), st.data())
def test_altered_inclusion_proofs_fail(size: int, data: st.DataObject) -> None:
    index = data.draw(st.integers(0, size - 1))
    tree = LEAVES[:size]
    r = root(tree)
    proof = inclusion_proof(index, tree)
    for bad in _mutations(proof, r):
        with pytest.raises(AuditVerificationError):
            verify_inclusion(tree[index], index, size, bad, r)
    with pytest.raises(AuditVerificationError):
        verify_inclusion(tree[index], index, size, proof, leaf_hash(b"other root"))


@settings(max_examples=150, deadline=None, database=None)
@given(st.integers(2, 40), st.data())
def test_altered_consistency_proofs_fail(new: int, data: st.DataObject) -> None:
    old = data.draw(st.integers(1, new - 1))
    old_root, new_root = root(LEAVES[:old]), root(LEAVES[:new])
    proof = consistency_proof(old, LEAVES[:new])
    for bad in _mutations(proof, new_root):
        with pytest.raises(AuditVerificationError):
            verify_consistency(old, new, old_root, new_root, bad)
    with pytest.raises(AuditVerificationError):
        verify_consistency(old, new, old_root, new_root, [])


def test_edge_cases() -> None:
    with pytest.raises(ValueError):
        inclusion_proof(3, LEAVES[:3])
    with pytest.raises(ValueError):
        consistency_proof(4, LEAVES[:3])
    with pytest.raises(AuditVerificationError, match="outside"):
        verify_inclusion(LEAVES[0], 0, 0, [], EMPTY_ROOT)
    with pytest.raises(AuditVerificationError, match="32 bytes"):
        verify_inclusion(LEAVES[0], 0, 1, [], b"short")
    # Every tree extends the empty tree, with an empty proof only.
    verify_consistency(0, 5, EMPTY_ROOT, root(LEAVES[:5]), [])
    with pytest.raises(AuditVerificationError):
        verify_consistency(0, 5, EMPTY_ROOT, root(LEAVES[:5]), [EMPTY_ROOT])
    with pytest.raises(AuditVerificationError):
        verify_consistency(0, 5, leaf_hash(b""), root(LEAVES[:5]), [])
    with pytest.raises(AuditVerificationError):
        verify_consistency(5, 4, root(LEAVES[:5]), root(LEAVES[:4]), [])
    with pytest.raises(AuditVerificationError, match="a frontier of 5 leaves"):
        Frontier.from_hashes(5, [EMPTY_ROOT])
