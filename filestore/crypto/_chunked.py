"""The C2SP chunked-encryption core (c2sp.org/chunked-encryption), generic over
the AEAD and the context.

This module knows nothing of filestore's header: it turns an input key, a salt
and arbitrary context bytes into one AES-GCM key, a base nonce and a key
commitment, and seals or opens runs of consecutive chunks. It is generic so the
published Wycheproof vectors (AES-128 and AES-256, any context) exercise the
very code that filestore runs; filestore itself only ever uses
``AEAD_AES_256_GCM`` with its 32-byte header as the context.

A message is ``salt(24) ‖ commitment(32) ‖ chunk 0 ‖ … ‖ chunk n``. Every chunk
but the last holds exactly :data:`CHUNK_SIZE` plaintext bytes; the last one
holds fewer (possibly none), so each plaintext length has exactly one layout
and a missing or added tail changes the layout. Chunk *k* is sealed with nonce
``base_nonce XOR k`` (a 96-bit big-endian integer) and empty associated data.

Every failure — wrong key size, short message, bad commitment, bad tag, bad
length — raises the one opaque :class:`~filestore.errors.IntegrityError`, and
no plaintext of a failed call is ever returned.
"""

from __future__ import annotations

import hmac
from typing import Final

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.hkdf import HKDFExpand

from filestore.crypto.entropy import random_bytes
from filestore.errors import IntegrityError

#: What the functions here accept as input bytes (``collections.abc.Buffer``
#: needs Python 3.12).
BytesLike = bytes | bytearray | memoryview

CHUNK_SIZE: Final = 16384
TAG_SIZE: Final = 16
ENC_CHUNK_SIZE: Final = CHUNK_SIZE + TAG_SIZE
SALT_SIZE: Final = 24
COMMITMENT_SIZE: Final = 32
NONCE_SIZE: Final = 12
#: salt ‖ commitment, in front of the first chunk.
MESSAGE_HEADER_SIZE: Final = SALT_SIZE + COMMITMENT_SIZE

#: AEAD name (as in the IANA registry, and as fed to the KDF) → key size.
KEY_SIZES: Final[dict[str, int]] = {"AEAD_AES_128_GCM": 16, "AEAD_AES_256_GCM": 32}

_LABEL: Final = b"c2sp.org/chunked-encryption@v1+"
_NONCE_MASK: Final = (1 << (8 * NONCE_SIZE)) - 1
# encrypt_into/decrypt_into arrived in cryptography 45; older versions fall back.
_HAS_INTO: Final = hasattr(AESGCM, "encrypt_into") and hasattr(AESGCM, "decrypt_into")


def message_size(plaintext_len: int) -> int:
    """Length of the message (salt, commitment and chunks) for a plaintext."""
    if plaintext_len < 0:
        raise ValueError("plaintext length must not be negative")
    return MESSAGE_HEADER_SIZE + plaintext_len + TAG_SIZE * (plaintext_len // CHUNK_SIZE + 1)


def message_plaintext_size(message_len: int) -> int:
    """The plaintext length whose message is ``message_len`` bytes long.

    IntegrityError if there is none: too short to hold the header and a final
    tag, or a tail that would make the final chunk full (or longer).
    """
    body = message_len - MESSAGE_HEADER_SIZE - TAG_SIZE
    if body < 0:
        raise IntegrityError()
    full, rest = divmod(body, ENC_CHUNK_SIZE)
    if rest >= CHUNK_SIZE:
        raise IntegrityError()
    return full * CHUNK_SIZE + rest


def sealed_size(plaintext_len: int, *, final: bool) -> int:
    """Encrypted length of ``plaintext_len`` bytes sealed as whole chunks,
    ending with the short final chunk if ``final``."""
    return plaintext_len + TAG_SIZE * (plaintext_len // CHUNK_SIZE + (1 if final else 0))


def run_size(first_index: int, count: int, plaintext_len: int) -> int:
    """Encrypted length of ``count`` chunks from ``first_index`` of a message
    whose plaintext is ``plaintext_len`` bytes (the final chunk may be short)."""
    last = plaintext_len // CHUNK_SIZE
    if count < 1 or first_index < 0 or first_index + count - 1 > last:
        raise ValueError("chunk run outside the message")
    if first_index + count - 1 < last:
        return count * ENC_CHUNK_SIZE
    return (count - 1) * ENC_CHUNK_SIZE + plaintext_len % CHUNK_SIZE + TAG_SIZE


def _aead_key_size(aead_name: str) -> int:
    try:
        return KEY_SIZES[aead_name]
    except KeyError:
        raise ValueError(f"unsupported AEAD {aead_name!r}") from None


def derive_keys(
    aead_name: str, input_key: bytes, salt: bytes, context: bytes
) -> tuple[bytes, bytes, bytes]:
    """``(aead key, base nonce, commitment)`` for one message.

    ``HKDF-Expand-SHA-512(prk=input_key, info=label ‖ aead ‖ 0x00 ‖ salt ‖
    context)``, split in that order. An input key whose length is not the
    AEAD's key size is refused (IntegrityError), as the construction requires.
    """
    key_size = _aead_key_size(aead_name)
    if len(input_key) != key_size or len(salt) != SALT_SIZE:
        raise IntegrityError()
    info = _LABEL + aead_name.encode("ascii") + b"\x00" + bytes(salt) + bytes(context)
    okm = HKDFExpand(hashes.SHA512(), key_size + NONCE_SIZE + COMMITMENT_SIZE, info).derive(
        bytes(input_key)
    )
    return okm[:key_size], okm[key_size : key_size + NONCE_SIZE], okm[key_size + NONCE_SIZE :]


def derive(
    aead_name: str, input_key: bytes, salt: bytes, context: bytes
) -> tuple[ChunkCipher, bytes]:
    """The per-message cipher and the 32-byte key commitment (see
    :func:`derive_keys`)."""
    aead_key, base_nonce, commitment = derive_keys(aead_name, input_key, salt, context)
    return ChunkCipher(aead_key, base_nonce), commitment


def open_message_header(
    aead_name: str, input_key: bytes, context: bytes, header: BytesLike
) -> ChunkCipher:
    """Check a message's salt and commitment; return the cipher for its chunks.

    ``header`` is the first :data:`MESSAGE_HEADER_SIZE` bytes of the message.
    The commitment is compared in constant time, and this is the only way to a
    :class:`ChunkCipher` on the decrypting side, so no chunk is ever decrypted
    under a key whose commitment did not match.
    """
    view = memoryview(header)
    if view.nbytes != MESSAGE_HEADER_SIZE:
        raise IntegrityError()
    cipher, commitment = derive(aead_name, input_key, bytes(view[:SALT_SIZE]), context)
    if not hmac.compare_digest(commitment, bytes(view[SALT_SIZE:])):
        raise IntegrityError()
    return cipher


def encrypt_message(
    aead_name: str,
    input_key: bytes,
    context: bytes,
    plaintext: BytesLike,
    salt: bytes | None = None,
) -> bytes:
    """Encrypt a whole message in one call (tests and small data)."""
    salt = random_bytes(SALT_SIZE) if salt is None else salt
    cipher, commitment = derive(aead_name, input_key, salt, context)
    return salt + commitment + cipher.seal(0, plaintext, final=True)


def decrypt_message(aead_name: str, input_key: bytes, context: bytes, message: BytesLike) -> bytes:
    """Decrypt a whole message; the plaintext length follows from its length."""
    view = memoryview(message)
    if view.nbytes < MESSAGE_HEADER_SIZE:
        raise IntegrityError()
    cipher = open_message_header(aead_name, input_key, context, view[:MESSAGE_HEADER_SIZE])
    plaintext_len = message_plaintext_size(view.nbytes)
    return bytes(cipher.open(0, view[MESSAGE_HEADER_SIZE:], plaintext_len))


class ChunkCipher:
    """One message's AEAD key and base nonce: seals and opens chunk runs.

    Holds one ``AESGCM`` for the whole message. Its repr shows nothing of the
    key. Callers obtain it from :func:`derive` or :func:`open_message_header`.
    Stateless apart from the key, so one instance may serve several threads as
    every call allocates its own output.
    """

    __slots__ = ("_aead", "_base_nonce")

    def __init__(self, aead_key: bytes, base_nonce: bytes) -> None:
        if len(base_nonce) != NONCE_SIZE:
            raise ValueError("base nonce must be 12 bytes")
        self._aead = AESGCM(aead_key)
        self._base_nonce = int.from_bytes(base_nonce, "big")

    def __repr__(self) -> str:
        return "ChunkCipher(<secret>)"

    def _nonce(self, index: int) -> bytes:
        if index < 0 or index > _NONCE_MASK:
            raise ValueError("chunk index out of range")
        return (self._base_nonce ^ index).to_bytes(NONCE_SIZE, "big")

    def seal(self, first_index: int, data: BytesLike, *, final: bool) -> bytearray:
        """Encrypt consecutive chunks starting at chunk ``first_index``.

        With ``final=False`` the length of ``data`` must be a positive multiple
        of :data:`CHUNK_SIZE` (full chunks are never final). With
        ``final=True`` the run ends with the short final chunk: ``data`` is
        split into full chunks and a tail of ``len % CHUNK_SIZE`` bytes
        (possibly empty) that is sealed as the message's last chunk.
        """
        src = memoryview(data).cast("B")
        # A fresh buffer written in place: cheaper than a reused scratch
        # buffer plus a copy out of it, and the caller may keep it.
        out = bytearray(sealed_size(src.nbytes, final=final))
        self.seal_into(first_index, src, memoryview(out), final=final)
        return out

    def seal_into(self, first_index: int, src: memoryview, dst: memoryview, *, final: bool) -> None:
        """:meth:`seal` into ``dst``, which must be exactly
        ``sealed_size(len(src), final=final)`` bytes."""
        full, tail = divmod(src.nbytes, CHUNK_SIZE)
        if not final and (tail or not full):
            raise ValueError("non-final runs must be whole chunks")
        if dst.nbytes != sealed_size(src.nbytes, final=final):
            raise ValueError("output buffer has the wrong size")
        aead = self._aead
        pos = opos = 0
        for k in range(first_index, first_index + full + (1 if final else 0)):
            size = min(CHUNK_SIZE, src.nbytes - pos)
            nonce = self._nonce(k)
            end = opos + size + TAG_SIZE
            if _HAS_INTO:
                aead.encrypt_into(nonce, src[pos : pos + size], None, dst[opos:end])
            else:  # pragma: no cover - cryptography < 45
                dst[opos:end] = aead.encrypt(nonce, src[pos : pos + size], None)
            pos += size
            opos = end

    def open(
        self,
        first_index: int,
        data: BytesLike,
        plaintext_len: int,
    ) -> bytearray:
        """Decrypt a run of consecutive chunks starting at ``first_index`` of a
        message whose plaintext is ``plaintext_len`` bytes long.

        ``data`` must be exactly whole chunks: full ones, and the short final
        chunk if the run reaches it. Any other length, an index past the final
        chunk or a bad tag raises IntegrityError, and the partly decrypted
        output is wiped before the error propagates.
        """
        src = memoryview(data).cast("B")
        last = plaintext_len // CHUNK_SIZE
        if plaintext_len < 0 or not 0 <= first_index <= last:
            raise IntegrityError()
        full, rest = divmod(src.nbytes, ENC_CHUNK_SIZE)
        end = first_index + full  # index just past the full chunks in the run
        if rest == 0 and full and end <= last:
            count = full  # full chunks only, ending before the final chunk
        elif end == last and rest == plaintext_len % CHUNK_SIZE + TAG_SIZE:
            count = full + 1  # the run ends with the final chunk
        else:
            raise IntegrityError()
        out = bytearray(src.nbytes - TAG_SIZE * count)
        dst = memoryview(out)
        if not self._open_into(first_index, count, last, src, dst):
            # decrypt_into writes before it verifies: leave nothing behind.
            dst[:] = bytes(dst.nbytes)
            raise IntegrityError()
        return out

    def _open_into(
        self, first_index: int, count: int, last: int, src: memoryview, dst: memoryview
    ) -> bool:
        """Decrypt ``count`` chunks into ``dst``; False at the first bad tag."""
        aead = self._aead
        pos = opos = 0
        for k in range(first_index, first_index + count):
            size = ENC_CHUNK_SIZE if k < last else src.nbytes - pos
            nonce = self._nonce(k)
            end = opos + size - TAG_SIZE
            try:
                if _HAS_INTO:
                    aead.decrypt_into(nonce, src[pos : pos + size], None, dst[opos:end])
                else:  # pragma: no cover - cryptography < 45
                    dst[opos:end] = aead.decrypt(nonce, src[pos : pos + size], None)
            except InvalidTag:
                return False
            pos += size
            opos = end
        return True
