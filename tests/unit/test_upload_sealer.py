"""The upload's CPU stage: batches hashed (inline or on a worker thread) and
encrypted on the loop into reused buffers must give the digest and blob of a
one-shot encryption, whatever the batch sizes."""

from __future__ import annotations

import asyncio
import hashlib
import random
import threading

import pytest

from filestore.crypto import HEADER_SIZE, Encryptor, Header, decrypt, encrypt
from filestore.uploads import (
    DEPTH,
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


class _GatedDigest:
    """A SHA-256 whose updates wait for a gate: a hash still running."""

    def __init__(self) -> None:
        self.inner = hashlib.sha256()
        self.gate = threading.Event()
        self.started = threading.Semaphore(0)

    def update(self, data: bytes | bytearray) -> None:
        self.started.release()
        assert self.gate.wait(30)
        self.inner.update(data)

    def digest(self) -> bytes:
        return self.inner.digest()


async def test_sealing_runs_ahead_of_the_hashes_and_keeps_what_the_writer_holds() -> None:
    """While the hashes of the batches before are still running, a batch is
    sealed without waiting, until a plaintext buffer whose hash is not done
    would be reused; and a ciphertext handed out stays intact while the
    writer may hold it (two more batches)."""
    rng = random.Random(7)
    batches = [rng.randbytes(PARALLEL_HASH_MIN + 16 * k) for k in range(DEPTH + 2)]
    encryptor = Encryptor(DEK, HEADER)
    digest = _GatedDigest()
    sealer = _BatchSealer(encryptor, digest)  # type: ignore[arg-type]
    sealed: list[bytearray] = []
    copies: list[bytes] = []
    for batch in batches[:DEPTH]:  # none of these hashes can finish
        out = await asyncio.wait_for(sealer.seal([batch]), 30)
        sealed.append(out)
        copies.append(bytes(out))
    blocked = asyncio.create_task(sealer.seal([batches[DEPTH]]))
    await asyncio.sleep(0.05)
    assert not blocked.done()  # its buffer is still being hashed
    assert [bytes(s) for s in sealed] == copies
    digest.gate.set()
    sealed.append(await asyncio.wait_for(blocked, 30))
    copies.append(bytes(sealed[-1]))
    sealed.append(await sealer.seal([batches[DEPTH + 1]]))
    copies.append(bytes(sealed[-1]))
    # What the writer may still hold (the last two) is untouched.
    assert [bytes(s) for s in sealed[-3:]] == copies[-3:]
    assert await sealer.digest() == hashlib.sha256(b"".join(batches)).digest()
    blob = encryptor.prefix() + b"".join(copies) + encryptor.finalize()
    assert decrypt(DEK, HEADER, blob) == b"".join(batches)


async def test_a_failed_hash_fails_the_digest_and_settle_waits() -> None:
    class Broken(_GatedDigest):
        def update(self, data: bytes | bytearray) -> None:
            raise MemoryError("no room to hash")

    sealer = _BatchSealer(Encryptor(DEK, HEADER), Broken())  # type: ignore[arg-type]
    await sealer.seal([bytes(PARALLEL_HASH_MIN)])
    await sealer.seal([bytes(PARALLEL_HASH_MIN)])  # refused by the lane, not hashed
    with pytest.raises(MemoryError):
        await sealer.digest()
    await sealer.settle()  # nothing left in flight, and it never raises
