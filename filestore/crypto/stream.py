"""Streaming encryption and random-access decryption of filestore blobs.

:class:`Encryptor` turns a plaintext that arrives in pieces into a blob
without ever holding more than one partial chunk of it; :class:`Decryptor`
checks a blob's header and key commitment once, then decrypts any run of
chunks, so a range read touches only the chunks it needs. Both keep one
``AESGCM`` per file and work in whole batches, so the per-call overhead is paid
once per batch (the gateway passes about 1 MiB at a time), not per chunk.

A 1 MiB batch takes well under a millisecond, so calling these inline on the
event loop is fine. ``cryptography`` releases the GIL inside each AEAD call,
but at 16 KiB per call the hand-off costs more than the parallelism gains
(measured: two threads together encrypt slower than one), so scale across
processes, not threads.

An :class:`Encryptor` is used by one writer at a time; a :class:`Decryptor`
may be shared between threads. Every call returns a fresh buffer that the
caller owns: writing in place into a new buffer measured faster than reusing
a scratch buffer and copying out of it.
"""

from __future__ import annotations

import hmac

from filestore.crypto._chunked import (
    CHUNK_SIZE,
    ENC_CHUNK_SIZE,
    SALT_SIZE,
    BytesLike,
    ChunkCipher,
    derive,
    open_message_header,
)
from filestore.crypto.entropy import random_bytes
from filestore.crypto.format import (
    AEAD_NAME,
    DEK_SIZE,
    HEADER_SIZE,
    PREFIX_SIZE,
    Header,
    plaintext_size,
)
from filestore.errors import IntegrityError

__all__ = ["Decryptor", "Encryptor", "decrypt", "encrypt"]


class Encryptor:
    """Encrypts one file: :meth:`prefix`, then :meth:`update` any number of
    times, then :meth:`finalize` exactly once.

    The concatenation ``prefix() ‖ update(…) ‖ … ‖ finalize()`` is the blob.
    ``update`` emits every full chunk as soon as it can (a full chunk is never
    the final one) and buffers only the remainder, under 16 KiB. ``salt`` is
    for tests; leave it None in production so each file gets a random one.
    """

    def __init__(self, dek: bytes, header: Header, *, salt: bytes | None = None) -> None:
        if len(dek) != DEK_SIZE:
            raise ValueError("the DEK must be 32 bytes")
        if salt is None:
            salt = random_bytes(SALT_SIZE)
        elif len(salt) != SALT_SIZE:
            raise ValueError("the salt must be 24 bytes")
        context = header.encode()
        self._cipher, commitment = derive(AEAD_NAME, dek, salt, context)
        self._prefix = context + salt + commitment
        self._pending = bytearray()
        self._index = 0
        self._done = False

    def __repr__(self) -> str:
        return f"Encryptor(next_chunk={self._index}, done={self._done})"

    def prefix(self) -> bytes:
        """The 88 bytes in front of chunk 0: header ‖ salt ‖ commitment."""
        return self._prefix

    def update(self, data: BytesLike) -> bytes | bytearray:
        """Add plaintext; return the ciphertext of every chunk now complete
        (possibly ``b""``), in a fresh buffer the caller owns."""
        count = (len(self._pending) + memoryview(data).nbytes) // CHUNK_SIZE
        out = bytearray(count * ENC_CHUNK_SIZE)
        return out if self.update_into(data, out) else b""

    def update_into(self, data: BytesLike, out: bytearray) -> int:
        """:meth:`update`, writing the ciphertext into ``out`` (resized to fit)
        and returning its length. A caller that streams a large file reuses
        a few buffers this way instead of faulting in fresh pages for every
        batch (measurable system time at hundreds of MB/s)."""
        if self._done:
            raise ValueError("update() after finalize()")
        src = memoryview(data).cast("B")
        pending = self._pending
        count = (len(pending) + src.nbytes) // CHUNK_SIZE
        if not count:
            pending += src
            del out[:]
            return 0
        size = count * ENC_CHUNK_SIZE
        if len(out) != size:
            if len(out) > size:
                del out[size:]
            else:
                out.extend(bytes(size - len(out)))
        with memoryview(out) as whole:
            self._seal_chunks(src, whole)
        return size

    def _seal_chunks(self, src: memoryview, dst: memoryview) -> None:
        """Seal the buffered remainder plus ``src`` as full chunks into
        ``dst`` (exactly their sealed size); buffer what is left over."""
        pending = self._pending
        cipher = self._cipher
        if pending:
            # Complete the buffered chunk first; it is full, so not final.
            take = CHUNK_SIZE - len(pending)
            pending += src[:take]
            src = src[take:]
            with memoryview(pending) as chunk:
                cipher.seal_into(self._index, chunk, dst[:ENC_CHUNK_SIZE], final=False)
            self._index += 1
            dst = dst[ENC_CHUNK_SIZE:]
            pending.clear()
        full = src.nbytes - src.nbytes % CHUNK_SIZE
        if full:
            cipher.seal_into(self._index, src[:full], dst, final=False)
            self._index += full // CHUNK_SIZE
        pending += src[full:]

    def finalize(self) -> bytearray:
        """Seal the buffered remainder (under 16 KiB, possibly empty) as the
        final chunk. May be called once."""
        if self._done:
            raise ValueError("finalize() called twice")
        self._done = True
        out = self._cipher.seal(self._index, self._pending, final=True)
        self._pending.clear()
        return out


class Decryptor:
    """Decrypts chunks of one blob whose prefix has been checked.

    Obtained only through :meth:`open`, so every instance stands for a header
    that matches what the metadata expects and a key commitment that matched:
    a wrong DEK, file id, KEK id or any altered prefix byte never gets this far.
    """

    __slots__ = ("_cipher",)

    def __init__(self, cipher: ChunkCipher) -> None:
        self._cipher = cipher

    def __repr__(self) -> str:
        return "Decryptor(<checked>)"

    @classmethod
    def open(cls, dek: bytes, expected: Header, prefix: BytesLike) -> Decryptor:
        """Check the first 88 blob bytes against ``expected`` and ``dek``.

        The header bytes must equal ``expected.encode()`` (compared in constant
        time); then the key is derived with the header as context and the
        commitment checked. IntegrityError on any mismatch.
        """
        view = memoryview(prefix).cast("B")
        if view.nbytes != PREFIX_SIZE or len(dek) != DEK_SIZE:
            raise IntegrityError()
        context = expected.encode()
        if not hmac.compare_digest(bytes(view[:HEADER_SIZE]), context):
            raise IntegrityError()
        return cls(open_message_header(AEAD_NAME, dek, context, view[HEADER_SIZE:]))

    def decrypt_chunks(self, first_index: int, data: BytesLike, plaintext_len: int) -> bytearray:
        """Decrypt the run of consecutive chunks starting at ``first_index``.

        ``plaintext_len`` is the file's total plaintext length (from the
        metadata row): it fixes which chunk is final and how long it is.
        ``data`` must be exactly the encrypted chunks of the run (see
        :func:`~filestore.crypto.format.chunk_span`); a wrong length, an index
        past the final chunk or a bad tag raises IntegrityError and returns no
        plaintext. ``data`` is not retained after the call returns.
        """
        return self._cipher.open(first_index, data, plaintext_len)


def encrypt(
    dek: bytes, header: Header, plaintext: BytesLike, *, salt: bytes | None = None
) -> bytes:
    """The whole blob for ``plaintext`` in one call (tests, small data)."""
    enc = Encryptor(dek, header, salt=salt)
    return enc.prefix() + bytes(enc.update(plaintext)) + bytes(enc.finalize())


def decrypt(dek: bytes, expected: Header, blob: BytesLike) -> bytes:
    """The whole plaintext of ``blob`` in one call (tests, small data).

    The plaintext length follows from the blob length; IntegrityError if the
    blob is cut, extended, altered or not the expected file's.
    """
    view = memoryview(blob).cast("B")
    plaintext_len = plaintext_size(view.nbytes)  # cheapest check first
    decryptor = Decryptor.open(dek, expected, view[:PREFIX_SIZE])
    return bytes(decryptor.decrypt_chunks(0, view[PREFIX_SIZE:], plaintext_len))
