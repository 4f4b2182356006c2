"""Every way of tampering with a stored blob is detected, and never yields bytes.

Coverage of bit flips, chosen to keep this file at a few seconds:

* the 5-byte file (109-byte blob): every bit of every byte;
* the 40000-byte file (3 chunks, 40136-byte blob): every bit of the 88-byte
  prefix and of each chunk's 16-byte tag, and one bit of every other byte
  (bit ``offset % 8``, so each bit position is hit throughout every chunk);
* both files: every truncation length and several extensions.

Every check goes through the whole-blob :func:`decrypt` (the length, header,
commitment and every chunk) — and, for chunk bodies, also through the
range-read path that decrypts only the chunk concerned.
"""

from __future__ import annotations

import os

import pytest

from filestore.crypto import (
    CHUNK_SIZE,
    ENC_CHUNK_SIZE,
    PREFIX_SIZE,
    TAG_SIZE,
    Decryptor,
    Header,
    chunk_offset,
    chunk_span,
    decrypt,
    encrypt,
)
from filestore.errors import IntegrityError

DEK = os.urandom(32)
HEADER = Header(3, os.urandom(16))
SMALL = os.urandom(40000)  # chunks 0, 1 full; chunk 2 final with 7232 bytes
TINY = b"hello"


@pytest.fixture(scope="module")
def small_blob() -> bytes:
    return encrypt(DEK, HEADER, SMALL)


@pytest.fixture(scope="module")
def tiny_blob() -> bytes:
    return encrypt(DEK, HEADER, TINY)


def rejected(
    blob: bytes | bytearray | memoryview, dek: bytes = DEK, header: Header = HEADER
) -> bool:
    """True if decrypt refuses the blob; a test fails if it ever returns."""
    try:
        got = decrypt(dek, header, blob)
    except IntegrityError:
        return True
    pytest.fail(f"tampered blob decrypted to {len(got)} bytes")


def chunk(blob: bytes, k: int, plaintext_len: int) -> bytes:
    offset, length = chunk_span(plaintext_len, k, k)
    return blob[offset : offset + length]


def test_untampered_blobs_decrypt(small_blob: bytes, tiny_blob: bytes) -> None:
    assert decrypt(DEK, HEADER, small_blob) == SMALL
    assert decrypt(DEK, HEADER, tiny_blob) == TINY
    assert len(small_blob) == PREFIX_SIZE + 2 * ENC_CHUNK_SIZE + 40000 - 2 * CHUNK_SIZE + TAG_SIZE


# ---------------------------------------------------------------- bit flips
def test_every_bit_flip_of_tiny_blob(tiny_blob: bytes) -> None:
    buf = bytearray(tiny_blob)
    for pos in range(len(buf)):
        for bit in range(8):
            buf[pos] ^= 1 << bit
            assert rejected(buf)
            buf[pos] ^= 1 << bit
    assert bytes(buf) == tiny_blob


def _small_flips(blob_len: int) -> list[tuple[int, int]]:
    dense = set(range(PREFIX_SIZE))
    for k in range(3):
        end = chunk_offset(k + 1) if k < 2 else blob_len
        dense.update(range(end - TAG_SIZE, end))
    flips = [(pos, bit) for pos in sorted(dense) for bit in range(8)]
    flips += [(pos, pos % 8) for pos in range(blob_len) if pos not in dense]
    return flips


def test_bit_flips_of_small_blob(small_blob: bytes) -> None:
    buf = bytearray(small_blob)
    flips = _small_flips(len(buf))
    assert len(flips) > len(buf)
    for pos, bit in flips:
        buf[pos] ^= 1 << bit
        assert rejected(buf)
        buf[pos] ^= 1 << bit
    assert bytes(buf) == small_blob


def test_bit_flips_in_a_chunk_fail_its_range_read(small_blob: bytes) -> None:
    decryptor = Decryptor.open(DEK, HEADER, small_blob[:PREFIX_SIZE])
    for k in range(3):
        data = bytearray(chunk(small_blob, k, len(SMALL)))
        for pos in range(0, len(data), 97):
            data[pos] ^= 1 << (pos % 8)
            with pytest.raises(IntegrityError):
                decryptor.decrypt_chunks(k, data, len(SMALL))
            data[pos] ^= 1 << (pos % 8)


# --------------------------------------------------------- truncation, extension
@pytest.mark.parametrize("which", ["tiny", "small"])
def test_every_truncation(which: str, tiny_blob: bytes, small_blob: bytes) -> None:
    blob = memoryview(tiny_blob if which == "tiny" else small_blob)
    for length in range(len(blob)):
        assert rejected(blob[:length])


@pytest.mark.parametrize("extra", [1, 15, TAG_SIZE, 17, CHUNK_SIZE, ENC_CHUNK_SIZE, 40000])
def test_extension_by_garbage(extra: int, small_blob: bytes, tiny_blob: bytes) -> None:
    assert rejected(small_blob + os.urandom(extra))
    assert rejected(tiny_blob + bytes(extra))


def test_extension_by_a_valid_next_chunk(small_blob: bytes) -> None:
    # The same key, salt and header, with a longer plaintext: its chunk 2 is a
    # valid full chunk and its chunk 3 a valid final chunk at the right index.
    salt = small_blob[32:56]
    longer = SMALL[: 2 * CHUNK_SIZE] + os.urandom(CHUNK_SIZE + 10)
    other = encrypt(DEK, HEADER, longer, salt=salt)
    n = len(longer)
    assert rejected(small_blob + chunk(other, 3, n))
    # Replacing our final chunk by their full chunk 2 and appending their
    # final chunk 3 is simply their (valid) message; but splicing their final
    # chunk after ours, or theirs full chunk in place of ours, is not.
    assert rejected(small_blob[: chunk_offset(2)] + chunk(other, 2, n))
    assert rejected(small_blob + chunk(other, 2, n))


# --------------------------------------------------------------- reordering
def test_chunk_reordering(small_blob: bytes) -> None:
    c0, c1, c2 = (chunk(small_blob, k, len(SMALL)) for k in range(3))
    prefix = small_blob[:PREFIX_SIZE]
    assert prefix + c0 + c1 + c2 == small_blob
    assert rejected(prefix + c1 + c0 + c2)  # swapped
    assert rejected(prefix + c0 + c0 + c2)  # duplicated
    assert rejected(prefix + c0 + c2)  # dropped (also a length change)


def test_final_chunk_cannot_be_dropped_after_full_chunks() -> None:
    plain = os.urandom(2 * CHUNK_SIZE)  # two full chunks and an empty final one
    blob = encrypt(DEK, HEADER, plain)
    assert rejected(blob[:-TAG_SIZE])


# ------------------------------------------------------- swaps between files
def test_chunk_swap_between_files_under_different_keys(small_blob: bytes) -> None:
    other_dek = os.urandom(32)
    other = encrypt(other_dek, HEADER, os.urandom(len(SMALL)))
    for k in range(3):
        offset, length = chunk_span(len(SMALL), k, k)
        spliced = (
            small_blob[:offset] + other[offset : offset + length] + small_blob[offset + length :]
        )
        assert rejected(spliced)
    # Their whole prefix (salt and commitment) with our key, and vice versa.
    assert rejected(other[:PREFIX_SIZE] + small_blob[PREFIX_SIZE:])
    assert rejected(small_blob, dek=other_dek)


def test_chunk_swap_between_files_with_same_dek_different_file_ids(small_blob: bytes) -> None:
    other_header = Header(HEADER.kek_id, os.urandom(16))
    other = encrypt(DEK, other_header, SMALL, salt=small_blob[32:56])
    assert decrypt(DEK, other_header, other) == SMALL
    for k in range(3):
        offset, length = chunk_span(len(SMALL), k, k)
        spliced = (
            small_blob[:offset] + other[offset : offset + length] + small_blob[offset + length :]
        )
        assert rejected(spliced)
    # Another file's blob presented as ours: its header does not match ...
    assert rejected(other)
    # ... and with our header bytes written over it, the commitment fails.
    assert rejected(HEADER.encode() + other[32:])


# -------------------------------------------------- wrong keys and headers
def test_wrong_file_id_kek_id_or_key(small_blob: bytes) -> None:
    assert rejected(small_blob, header=Header(HEADER.kek_id, os.urandom(16)))
    assert rejected(small_blob, header=Header(HEADER.kek_id + 1, HEADER.file_id))
    assert rejected(small_blob, dek=os.urandom(32))
    assert rejected(small_blob, dek=DEK[:16])


@pytest.mark.parametrize(
    ("offset", "field"),
    [(0, "magic"), (3, "magic"), (8, "version"), (9, "suite"), (10, "flags"), (11, "flags")],
)
def test_altered_header_fields(offset: int, field: str, small_blob: bytes) -> None:
    blob = bytearray(small_blob)
    blob[offset] ^= 0x01
    assert rejected(blob)
    with pytest.raises(IntegrityError):
        Decryptor.open(DEK, HEADER, blob[:PREFIX_SIZE])


def test_header_rewritten_to_match_altered_metadata(small_blob: bytes) -> None:
    # An attacker who changes the KEK id in both the blob and the metadata row
    # still fails: the header is the key-derivation context.
    moved = Header(HEADER.kek_id + 1, HEADER.file_id)
    assert rejected(moved.encode() + small_blob[32:], header=moved)
