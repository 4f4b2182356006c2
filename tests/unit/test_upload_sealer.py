"""The upload's CPU stage: batches hashed (inline or on a worker thread) and
encrypted on the loop into reused buffers must give the digest and blob of a
one-shot encryption, whatever the batch sizes."""

from __future__ import annotations

import hashlib
import random

import pytest

from filestore.crypto import HEADER_SIZE, Encryptor, Header, decrypt, encrypt
from filestore.uploads import (
    HASHLIB_GIL_MIN,
    KEEP_GIL_BELOW,
    PARALLEL_HASH_MIN,
    _BatchSealer,
    hash_keeping_gil,
)

DEK = bytes(range(32))
HEADER = Header(3, bytes(range(16)))


@pytest.mark.parametrize(
    "batch_sizes",
    [
        [PARALLEL_HASH_MIN - 1, 1, 5000],  # inline hashing only
        [4096, HASHLIB_GIL_MIN, KEEP_GIL_BELOW - 1, KEEP_GIL_BELOW, 3],  # in pieces, then whole
        [PARALLEL_HASH_MIN, 3 * PARALLEL_HASH_MIN + 17, PARALLEL_HASH_MIN + 1],  # threaded
        [PARALLEL_HASH_MIN + 9, 100, 2 * PARALLEL_HASH_MIN, 7],  # both, buffers shrink/grow
    ],
)
async def test_batches_make_the_one_shot_blob_and_digest(batch_sizes: list[int]) -> None:
    rng = random.Random(sum(batch_sizes))
    batches = [rng.randbytes(size) for size in batch_sizes]
    plaintext = b"".join(batches)
    encryptor = Encryptor(DEK, HEADER)
    digest = hashlib.sha256()
    sealer = _BatchSealer(encryptor, digest)
    out = [encryptor.prefix()]
    for batch in batches:
        # Each batch arrives as several pieces, as the request body does.
        cut = len(batch) // 3
        out.append(bytes(await sealer.seal([batch[:cut], batch[cut:]])))
    out.append(encryptor.finalize())
    blob = b"".join(out)
    assert await sealer.digest() == hashlib.sha256(plaintext).digest()
    assert blob == encrypt(DEK, HEADER, plaintext, salt=blob[HEADER_SIZE:56])
    assert decrypt(DEK, HEADER, blob) == plaintext


@pytest.mark.parametrize(
    "size",
    [
        0,
        1,
        HASHLIB_GIL_MIN - 2,
        HASHLIB_GIL_MIN - 1,
        HASHLIB_GIL_MIN,
        4096,
        2 * (HASHLIB_GIL_MIN - 1) + 1,
        KEEP_GIL_BELOW - 1,
        KEEP_GIL_BELOW,
        KEEP_GIL_BELOW + 1,
    ],
)
def test_hashing_in_pieces_gives_the_whole_digest(size: int) -> None:
    data = bytearray(random.Random(size).randbytes(size))
    digest = hashlib.sha256(b"before")
    hash_keeping_gil(digest, data)
    assert digest.hexdigest() == hashlib.sha256(b"before" + data).hexdigest()
    assert data == random.Random(size).randbytes(size)  # left as it was


async def test_a_result_stays_valid_until_the_call_after_next() -> None:
    """The blob writer may still hold the previous batch's ciphertext while
    the next one is sealed: consecutive results are distinct buffers."""
    sealer = _BatchSealer(Encryptor(DEK, HEADER), hashlib.sha256())
    first = await sealer.seal([bytes(PARALLEL_HASH_MIN)])
    kept = bytes(first)
    second = await sealer.seal([b"\x01" * PARALLEL_HASH_MIN])
    assert second is not first
    assert bytes(first) == kept


async def test_cleanup_waits_for_the_hash_in_flight() -> None:
    """A failed upload's cleanup settles the worker still reading the
    plaintext buffer before the buffers go; the sealer is then idle."""
    digest = hashlib.sha256()
    sealer = _BatchSealer(Encryptor(DEK, HEADER), digest)
    data = random.Random(5).randbytes(4 * PARALLEL_HASH_MIN)
    await sealer.seal([data])
    await sealer.settle()
    assert digest.digest() == hashlib.sha256(data).digest()  # the hash had finished
    await sealer.settle()  # nothing left in flight: a no-op
