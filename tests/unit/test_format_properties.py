"""Properties of the blob format, over any size, key, header and damage.

``test_crypto_format.py`` and ``test_crypto_tamper.py`` check chosen files
exhaustively (every bit of a 5-byte file, every truncation of a 3-chunk one,
named splices). Here hypothesis chooses: plaintext lengths anywhere, with
extra weight on the chunk boundaries (0, 16383, 16384, 16385, ...), any DEK,
KEK id and file id, and any damage — one bit flipped anywhere, the blob cut
anywhere, chunks reordered, repeated or dropped, bytes appended. A damaged
blob is always refused with the format's one error (IntegrityError) and
never yields plaintext; an intact one always round-trips, and any range of
it reads back as exactly that slice of the plaintext, by chunk arithmetic
and through the read path the gateway streams downloads with.

Bounded for the default run (a few seconds); ``-m long`` runs more examples.
"""

from __future__ import annotations

import asyncio
import hashlib
import os
import random
from pathlib import Path

import pytest
from hypothesis import HealthCheck, assume, given, note, settings
from hypothesis import strategies as st

from filestore import ids
from filestore.clock import ManualClock
from filestore.crypto import (
    CHUNK_SIZE,
    HEADER_SIZE,
    PREFIX_SIZE,
    Decryptor,
    Header,
    chunk_span,
    ciphertext_size,
    decrypt,
    encrypt,
)
from filestore.errors import IntegrityError
from filestore.files_info import FileInfo
from filestore.reads import OpenFile
from filestore.storage.local import LocalBlobStore

BOUNDED = settings(
    max_examples=40,
    deadline=None,
    database=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
LONG = settings(BOUNDED, max_examples=int(os.environ.get("FILESTORE_FUZZ_EXAMPLES", "500")))
DEK = hashlib.sha256(b"format properties").digest()
HEADER = Header(7, bytes(range(16)))
MAX_CHUNKS = 4


def sizes(max_chunks: int = MAX_CHUNKS, least: int = 0) -> st.SearchStrategy[int]:
    """Plaintext lengths up to ``max_chunks`` full chunks and a partial one,
    often within two bytes of a chunk boundary."""
    near_boundary = st.builds(
        lambda k, d: k * CHUNK_SIZE + d, st.integers(0, max_chunks), st.integers(-2, 2)
    )
    anywhere = st.integers(0, (max_chunks + 1) * CHUNK_SIZE - 1)
    return st.one_of(near_boundary, anywhere).filter(lambda n: n >= least)


def plaintext(n: int, seed: int) -> bytes:
    return random.Random(seed).randbytes(n)


seeds = st.integers(0, 2**32)


def refused(blob: bytes | bytearray, dek: bytes = DEK, header: Header = HEADER) -> None:
    """decrypt refuses ``blob`` with IntegrityError; returning is a failure."""
    try:
        got = decrypt(dek, header, blob)
    except IntegrityError:
        return
    pytest.fail(f"a damaged blob of {len(blob)} bytes decrypted to {len(got)} bytes")


def chunks(blob: bytes, n: int) -> list[bytes]:
    """The blob's encrypted chunks, in order (the last one is the short final)."""
    out = []
    for k in range(n // CHUNK_SIZE + 1):
        offset, length = chunk_span(n, k, k)
        out.append(blob[offset : offset + length])
    assert blob[:PREFIX_SIZE] + b"".join(out) == blob
    return out


# ------------------------------------------------------------------ round trip
@BOUNDED
@given(
    sizes(),
    seeds,
    st.binary(min_size=32, max_size=32),
    st.integers(0, 2**32 - 1),
    st.binary(min_size=16, max_size=16),
)
def test_round_trip_for_any_size_key_and_header(
    n: int, seed: int, dek: bytes, kek_id: int, file_id: bytes
) -> None:
    data = plaintext(n, seed)
    header = Header(kek_id, file_id)
    blob = encrypt(dek, header, data)
    assert len(blob) == ciphertext_size(n)
    assert blob[:HEADER_SIZE] == header.encode()
    assert decrypt(dek, header, blob) == data
    # Under another key, or read as another file, the same blob is refused.
    refused(blob, dek=hashlib.sha256(dek).digest(), header=header)
    refused(blob, dek=dek, header=Header(kek_id, hashlib.sha256(file_id).digest()[:16]))


# ------------------------------------------------------------------ damage
@BOUNDED
@given(sizes(), seeds, st.data())
def test_any_single_bit_flip_is_refused(n: int, seed: int, data: st.DataObject) -> None:
    blob = encrypt(DEK, HEADER, plaintext(n, seed))
    pos = data.draw(st.integers(0, len(blob) - 1), label="byte")
    bit = data.draw(st.integers(0, 7), label="bit")
    damaged = bytearray(blob)
    damaged[pos] ^= 1 << bit
    refused(damaged)
    if pos >= PREFIX_SIZE:
        # The range path, which decrypts only the chunk hit, refuses it too.
        k = next(k for k in range(n // CHUNK_SIZE + 1) if pos < sum(chunk_span(n, k, k)))
        offset, length = chunk_span(n, k, k)
        decryptor = Decryptor.open(DEK, HEADER, blob[:PREFIX_SIZE])
        with pytest.raises(IntegrityError):
            decryptor.decrypt_chunks(k, damaged[offset : offset + length], n)


@BOUNDED
@given(sizes(), seeds, st.data())
def test_a_blob_cut_anywhere_is_refused(n: int, seed: int, data: st.DataObject) -> None:
    blob = encrypt(DEK, HEADER, plaintext(n, seed))
    cut = data.draw(st.integers(0, len(blob) - 1), label="length kept")
    refused(blob[:cut])


@BOUNDED
@given(sizes(least=CHUNK_SIZE), seeds, st.data())
def test_reordered_repeated_or_dropped_chunks_are_refused(
    n: int, seed: int, data: st.DataObject
) -> None:
    blob = encrypt(DEK, HEADER, plaintext(n, seed))
    original = chunks(blob, n)
    count = len(original)
    how = data.draw(st.sampled_from(["reorder", "repeat", "drop"]))
    if how == "reorder":
        order = data.draw(st.permutations(range(count)))
        assume(order != list(range(count)))
        changed = [original[k] for k in order]
    elif how == "repeat":
        k = data.draw(st.integers(0, count - 1))
        at = data.draw(st.integers(0, count))
        changed = [*original[:at], original[k], *original[at:]]
    else:
        k = data.draw(st.integers(0, count - 1))
        changed = original[:k] + original[k + 1 :]
    note(f"{how}: {count} chunks")
    refused(blob[:PREFIX_SIZE] + b"".join(changed))


@BOUNDED
@given(sizes(), seeds, st.data())
def test_appended_bytes_are_refused(n: int, seed: int, data: st.DataObject) -> None:
    blob = encrypt(DEK, HEADER, plaintext(n, seed))
    extra = data.draw(
        st.one_of(
            st.binary(min_size=1, max_size=64),
            st.sampled_from(chunks(blob, n)),  # a copy of one of its own chunks
            st.integers(1, 2 * CHUNK_SIZE + 40).map(lambda k: random.Random(k).randbytes(k)),
        ),
        label="appended",
    )
    refused(blob + extra)


# ------------------------------------------------------------------ ranges
@st.composite
def ranges(draw: st.DrawFn) -> tuple[int, int, int]:
    """(size, first, last) with 0 <= first <= last < size."""
    n = draw(sizes().filter(lambda n: n > 0))
    first = draw(st.integers(0, n - 1) | st.sampled_from([0, n - 1]))
    edge = min(n - 1, (first // CHUNK_SIZE + 1) * CHUNK_SIZE - 1)  # the end of first's chunk
    last = draw(st.integers(first, n - 1) | st.sampled_from([first, edge, n - 1]))
    return n, first, last


def read_range(blob: bytes, n: int, first: int, last: int) -> bytes:
    """Bytes ``first..last`` as docs/format.md says to read them: the chunks
    they lie in, and only those, then trimmed."""
    k0, k1 = first // CHUNK_SIZE, last // CHUNK_SIZE
    offset, length = chunk_span(n, k0, k1)
    decryptor = Decryptor.open(DEK, HEADER, blob[:PREFIX_SIZE])
    plain = decryptor.decrypt_chunks(k0, blob[offset : offset + length], n)
    skip = first - k0 * CHUNK_SIZE
    return bytes(plain[skip : skip + last - first + 1])


@BOUNDED
@given(ranges(), seeds)
def test_any_range_reads_as_that_slice_of_the_plaintext(
    span: tuple[int, int, int], seed: int
) -> None:
    n, first, last = span
    data = plaintext(n, seed)
    blob = encrypt(DEK, HEADER, data)
    assert read_range(blob, n, first, last) == data[first : last + 1]


def _open_file(store: LocalBlobStore, blob: bytes, n: int, batch_chunks: int) -> OpenFile:
    info = FileInfo(
        id=HEADER.file_id,
        size=n,
        sha256="0" * 64,
        created_at=0.0,
        expires_at=1e12,
        filename=None,
        content_type=None,
        max_downloads=None,
        downloads=0,
    )
    decryptor = Decryptor.open(DEK, HEADER, blob[:PREFIX_SIZE])
    return OpenFile(info, store, decryptor, batch_chunks, ManualClock(), deadline=1e12)


def test_any_range_reads_as_that_slice_through_the_read_path(tmp_path: Path) -> None:
    """The gateway's own range path (``reads.OpenFile.plaintext``, which
    reads whole batches of chunks from the store and trims them) on a real
    local blob store, with batches of one chunk or several."""
    loop = asyncio.new_event_loop()
    store = loop.run_until_complete(LocalBlobStore.open(tmp_path / "store"))
    name = ids.blob_name(HEADER.file_id)

    async def stored_range(blob: bytes, n: int, first: int, last: int, batch: int) -> bytes:
        writer = await store.create(name)
        await writer.write(blob)
        await writer.commit()
        try:
            out = bytearray()
            async for piece in _open_file(store, blob, n, batch).plaintext(first, last):
                out += piece
            return bytes(out)
        finally:
            await store.delete(name)

    @BOUNDED
    @given(ranges(), seeds, st.integers(1, 3))
    def check(span: tuple[int, int, int], seed: int, batch: int) -> None:
        n, first, last = span
        data = plaintext(n, seed)
        blob = encrypt(DEK, HEADER, data)
        got = loop.run_until_complete(stored_range(blob, n, first, last, batch))
        assert got == data[first : last + 1]

    try:
        check()
    finally:
        loop.run_until_complete(store.close())
        loop.run_until_complete(loop.shutdown_asyncgens())
        loop.close()


# ------------------------------------------------------------------ long
@pytest.mark.long
@LONG
@given(sizes(max_chunks=12), seeds, st.data())
def test_long_damage_and_ranges_of_larger_blobs(n: int, seed: int, data: st.DataObject) -> None:
    """Flips, cuts and ranges on blobs of up to 13 chunks, many more examples."""
    data_bytes = plaintext(n, seed)
    blob = encrypt(DEK, HEADER, data_bytes)
    damaged = bytearray(blob)
    damaged[data.draw(st.integers(0, len(blob) - 1))] ^= 1 << data.draw(st.integers(0, 7))
    refused(damaged)
    refused(blob[: data.draw(st.integers(0, len(blob) - 1))])
    if n:
        first = data.draw(st.integers(0, n - 1))
        last = data.draw(st.integers(first, n - 1))
        assert read_range(blob, n, first, last) == data_bytes[first : last + 1]
