"""The blob format: header, size arithmetic, streaming round trips, chunk runs."""

from __future__ import annotations

import os
import random

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from filestore.crypto import (
    CHUNK_SIZE,
    ENC_CHUNK_SIZE,
    HEADER_SIZE,
    PREFIX_SIZE,
    TAG_SIZE,
    Decryptor,
    Encryptor,
    Header,
    chunk_offset,
    chunk_span,
    ciphertext_size,
    decrypt,
    encrypt,
    plaintext_size,
)
from filestore.errors import IntegrityError

DEK = bytes(range(32))
HEADER = Header(7, bytes(range(100, 116)))
SIZES = [0, 1, 5, CHUNK_SIZE - 1, CHUNK_SIZE, CHUNK_SIZE + 1, 3 * CHUNK_SIZE, 3 * CHUNK_SIZE + 7]


def _data(n: int, seed: int = 0) -> bytes:
    return random.Random(seed).randbytes(n)


def _stream(plaintext: bytes, pieces: list[int], header: Header = HEADER) -> bytes:
    """Encrypt through update() in pieces of the given sizes (cycled)."""
    enc = Encryptor(DEK, header)
    out = [enc.prefix()]
    written = PREFIX_SIZE
    pos = 0
    i = 0
    while pos < len(plaintext):
        size = pieces[i % len(pieces)]
        i += 1
        piece = plaintext[pos : pos + size]
        pos += len(piece)
        produced = enc.update(memoryview(piece) if i % 2 else bytearray(piece))
        written += len(produced)
        # Full chunks are emitted eagerly; only the partial chunk is held back.
        assert written == PREFIX_SIZE + (pos // CHUNK_SIZE) * ENC_CHUNK_SIZE
        out.append(produced)
    out.append(enc.finalize())
    return b"".join(out)


# ------------------------------------------------------------------- header
def test_header_layout() -> None:
    raw = Header(0x01020304, bytes(range(16))).encode()
    assert len(raw) == HEADER_SIZE == 32
    assert raw[:8] == bytes.fromhex("89 46 53 54 0D 0A 1A 0A")
    assert raw[8:12] == bytes([1, 1, 0, 0])
    assert raw[12:16] == bytes([1, 2, 3, 4])
    assert raw[16:] == bytes(range(16))
    assert Header.decode(raw) == Header(0x01020304, bytes(range(16)))


@pytest.mark.parametrize(
    ("offset", "name"), [(0, "magic"), (7, "magic"), (8, "version"), (9, "suite"), (10, "flags")]
)
def test_header_decode_rejects_unknown_fields(offset: int, name: str) -> None:
    raw = bytearray(HEADER.encode())
    raw[offset] ^= 0x02
    with pytest.raises(IntegrityError):
        Header.decode(bytes(raw))


@pytest.mark.parametrize("length", [0, 31, 33])
def test_header_decode_rejects_wrong_length(length: int) -> None:
    with pytest.raises(IntegrityError):
        Header.decode((HEADER.encode() * 2)[:length])


@pytest.mark.parametrize(("kek_id", "file_id"), [(-1, bytes(16)), (1 << 32, bytes(16)), (1, b"x")])
def test_header_rejects_bad_values(kek_id: int, file_id: bytes) -> None:
    with pytest.raises(ValueError):
        Header(kek_id, file_id)


# ----------------------------------------------------------------- arithmetic
def test_sizes_of_edge_lengths() -> None:
    assert ciphertext_size(0) == PREFIX_SIZE + TAG_SIZE
    assert ciphertext_size(CHUNK_SIZE - 1) == PREFIX_SIZE + CHUNK_SIZE - 1 + TAG_SIZE
    # A full chunk is never final: 16384 bytes are a full chunk plus an empty one.
    assert ciphertext_size(CHUNK_SIZE) == PREFIX_SIZE + ENC_CHUNK_SIZE + TAG_SIZE
    assert chunk_offset(0) == 88
    assert chunk_offset(3) == 88 + 3 * 16400


@given(st.integers(0, 1 << 40))
def test_plaintext_size_inverts_ciphertext_size(n: int) -> None:
    assert plaintext_size(ciphertext_size(n)) == n


@given(st.integers(0, 1 << 22))
def test_blob_lengths_without_plaintext_are_rejected(blob_len: int) -> None:
    try:
        n = plaintext_size(blob_len)
    except IntegrityError:
        # No length maps here: before the first tag, or a full "final" chunk.
        body = blob_len - PREFIX_SIZE - TAG_SIZE
        assert body < 0 or body % ENC_CHUNK_SIZE >= CHUNK_SIZE
    else:
        assert ciphertext_size(n) == blob_len


@given(st.integers(0, 10 * CHUNK_SIZE), st.data())
def test_chunk_span_covers_exactly_the_chunks(n: int, data: st.DataObject) -> None:
    last_index = n // CHUNK_SIZE
    first = data.draw(st.integers(0, last_index))
    last = data.draw(st.integers(first, last_index))
    offset, length = chunk_span(n, first, last)
    assert offset == chunk_offset(first)
    end = ciphertext_size(n) if last == last_index else chunk_offset(last + 1)
    assert offset + length == end


@pytest.mark.parametrize(("first", "last"), [(-1, 0), (1, 0), (0, 3)])
def test_chunk_span_rejects_runs_outside_the_file(first: int, last: int) -> None:
    with pytest.raises(ValueError):
        chunk_span(2 * CHUNK_SIZE + 1, first, last)


# ------------------------------------------------------------------ round trip
@pytest.mark.parametrize("n", SIZES)
def test_round_trip_sizes(n: int) -> None:
    plaintext = _data(n)
    blob = encrypt(DEK, HEADER, plaintext)
    assert len(blob) == ciphertext_size(n)
    assert decrypt(DEK, HEADER, blob) == plaintext
    assert blob[:HEADER_SIZE] == HEADER.encode()


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    st.sampled_from(SIZES) | st.integers(0, 5 * CHUNK_SIZE),
    st.lists(st.integers(0, 3 * CHUNK_SIZE), min_size=1, max_size=8),
)
def test_round_trip_in_random_pieces(n: int, pieces: list[int]) -> None:
    plaintext = _data(n, seed=n)
    blob = _stream(plaintext, [p for p in pieces if p] or [1])
    assert blob == encrypt(DEK, HEADER, plaintext, salt=blob[HEADER_SIZE:56])
    assert decrypt(DEK, HEADER, blob) == plaintext


def test_round_trip_several_mib_in_uneven_pieces() -> None:
    n = 3 * (1 << 20) + 12345
    plaintext = os.urandom(n)
    rng = random.Random(1)
    pieces = [
        rng.choice([1, 100, CHUNK_SIZE - 1, CHUNK_SIZE + 1, 1 << 20, 77777]) for _ in range(50)
    ]
    blob = _stream(plaintext, pieces)
    assert decrypt(DEK, HEADER, blob) == plaintext


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    st.integers(0, 6 * CHUNK_SIZE),
    st.lists(st.integers(1, 3 * CHUNK_SIZE), min_size=1, max_size=8),
)
def test_update_into_reused_buffers_makes_the_same_blob(n: int, pieces: list[int]) -> None:
    """Two buffers taken in turn, shrinking and growing as the pieces vary,
    give byte for byte the blob update() gives; stale bytes never leak."""
    plaintext = _data(n, seed=n + 1)
    enc = Encryptor(DEK, HEADER)
    buffers = (bytearray(b"\xff" * (4 * ENC_CHUNK_SIZE)), bytearray())
    out = [enc.prefix()]
    pos = i = 0
    while pos < n:
        piece = plaintext[pos : pos + pieces[i % len(pieces)]]
        buffer = buffers[i % 2]
        i += 1
        pos += len(piece)
        length = enc.update_into(piece, buffer)
        assert length == len(buffer)
        out.append(bytes(buffer))
    out.append(enc.finalize())
    blob = b"".join(out)
    assert blob == encrypt(DEK, HEADER, plaintext, salt=blob[HEADER_SIZE:56])


def test_salt_is_random_per_file() -> None:
    a, b = Encryptor(DEK, HEADER), Encryptor(DEK, HEADER)
    assert a.prefix()[32:56] != b.prefix()[32:56]


def test_encryptor_misuse() -> None:
    with pytest.raises(ValueError):
        Encryptor(DEK[:16], HEADER)
    with pytest.raises(ValueError):
        Encryptor(DEK, HEADER, salt=b"short")
    enc = Encryptor(DEK, HEADER)
    enc.finalize()
    with pytest.raises(ValueError):
        enc.finalize()
    with pytest.raises(ValueError):
        enc.update(b"x")


# ------------------------------------------------------------------ chunk runs
N = 5 * CHUNK_SIZE + 1000  # chunks 0..4 full, chunk 5 final (1000 bytes)
PLAIN = _data(N, seed=5)
BLOB = encrypt(DEK, HEADER, PLAIN)


def _run(first: int, last: int) -> bytes:
    offset, length = chunk_span(N, first, last)
    decryptor = Decryptor.open(DEK, HEADER, BLOB[:PREFIX_SIZE])
    return decryptor.decrypt_chunks(first, BLOB[offset : offset + length], N)


@pytest.mark.parametrize(
    ("first", "last"), [(0, 0), (1, 3), (2, 2), (4, 4), (3, 5), (5, 5), (0, 5)]
)
def test_decrypt_chunk_runs(first: int, last: int) -> None:
    assert _run(first, last) == PLAIN[first * CHUNK_SIZE : (last + 1) * CHUNK_SIZE]


def test_decrypt_chunks_accepts_memoryview_and_empty_final_chunk() -> None:
    n = 2 * CHUNK_SIZE
    blob = encrypt(DEK, HEADER, _data(n))
    decryptor = Decryptor.open(DEK, HEADER, memoryview(blob)[:PREFIX_SIZE])
    offset, length = chunk_span(n, 2, 2)
    assert length == TAG_SIZE
    assert decryptor.decrypt_chunks(2, memoryview(blob)[offset : offset + length], n) == b""


@pytest.mark.parametrize(
    ("first", "cut"),
    [
        (1, -1),  # one byte short
        (1, 1),  # one byte long
        (6, 0),  # index beyond the final chunk
        (-1, 0),  # negative index
        (4, 0),  # two full chunks from index 4, but chunk 5 is the short final one
        (2, 0),  # chunks 3..4 presented as chunks 2..3: tags fail
    ],
)
def test_decrypt_chunks_rejects_wrong_runs(first: int, cut: int) -> None:
    decryptor = Decryptor.open(DEK, HEADER, BLOB[:PREFIX_SIZE])
    offset, length = chunk_span(N, 3, 4)
    data = BLOB[offset : offset + length + cut] + (b"\0" if cut > 0 else b"")
    with pytest.raises(IntegrityError):
        decryptor.decrypt_chunks(first, data, N)


def test_decrypt_chunks_rejects_empty_run_and_final_as_full() -> None:
    decryptor = Decryptor.open(DEK, HEADER, BLOB[:PREFIX_SIZE])
    with pytest.raises(IntegrityError):
        decryptor.decrypt_chunks(0, b"", N)
    # The true final chunk, but the caller believes the file is longer.
    offset, length = chunk_span(N, 5, 5)
    with pytest.raises(IntegrityError):
        decryptor.decrypt_chunks(5, BLOB[offset : offset + length], N + 1)
