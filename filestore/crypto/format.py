"""filestore's blob layout: the 32-byte header and the size arithmetic.

A stored blob is ``header(32) ‖ salt(24) ‖ commitment(32) ‖ chunks``; the
header is the KDF context of the chunked encryption (see ``_chunked``), so
changing any header byte makes the commitment check fail. Everything here is
pure arithmetic on lengths and offsets, so storage and range-read code can plan
reads without touching keys. ``docs/format.md`` describes the bytes.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Final

from filestore.crypto._chunked import (
    CHUNK_SIZE,
    ENC_CHUNK_SIZE,
    MESSAGE_HEADER_SIZE,
    TAG_SIZE,
    message_plaintext_size,
    message_size,
    run_size,
)
from filestore.errors import IntegrityError

__all__ = [
    "CHUNK_SIZE",
    "ENC_CHUNK_SIZE",
    "HEADER_SIZE",
    "PREFIX_SIZE",
    "TAG_SIZE",
    "Header",
    "chunk_offset",
    "chunk_span",
    "ciphertext_size",
    "plaintext_size",
]

MAGIC: Final = b"\x89FST\r\n\x1a\n"
VERSION: Final = 1
#: Suite 1 = Cobblestone-256: AES-256-GCM, HKDF-Expand-SHA-512, 16 KiB chunks.
SUITE: Final = 1
FLAGS: Final = 0
HEADER_SIZE: Final = 32
#: header ‖ salt ‖ commitment: the bytes in front of chunk 0.
PREFIX_SIZE: Final = HEADER_SIZE + MESSAGE_HEADER_SIZE
#: The AEAD the suite uses, by the name the KDF label carries.
AEAD_NAME: Final = "AEAD_AES_256_GCM"
DEK_SIZE: Final = 32

_MAX_KEK_ID: Final = 0xFFFFFFFF
_FILE_ID_SIZE: Final = 16
_FIXED: Final = MAGIC + bytes([VERSION, SUITE]) + FLAGS.to_bytes(2, "big")


@dataclass(frozen=True)
class Header:
    """The plaintext header in front of every blob.

    It names the key-encryption key that wraps the file's DEK and the file's
    id, so a blob cannot be passed off as another file's (the reader compares
    both with the metadata row, and they feed the key derivation).
    """

    kek_id: int
    file_id: bytes

    def __post_init__(self) -> None:
        if not 0 <= self.kek_id <= _MAX_KEK_ID:
            raise ValueError("kek_id must fit in an unsigned 32-bit integer")
        if not isinstance(self.file_id, bytes) or len(self.file_id) != _FILE_ID_SIZE:
            raise ValueError("file_id must be 16 bytes")

    def encode(self) -> bytes:
        """The 32 header bytes: magic, version, suite, flags, KEK id, file id."""
        return _FIXED + self.kek_id.to_bytes(4, "big") + self.file_id

    @classmethod
    def decode(cls, data: bytes) -> Header:
        """Parse header bytes; IntegrityError on a wrong length, magic,
        version, suite or flags (a reader accepts exactly what it writes)."""
        if len(data) != HEADER_SIZE or data[: len(_FIXED)] != _FIXED:
            raise IntegrityError()
        return cls(int.from_bytes(data[12:16], "big"), bytes(data[16:32]))


def ciphertext_size(plaintext_len: int) -> int:
    """Length of the whole blob (header included) for a plaintext length."""
    return HEADER_SIZE + message_size(plaintext_len)


def plaintext_size(blob_len: int) -> int:
    """The plaintext length of a blob of ``blob_len`` bytes; IntegrityError
    if no plaintext length gives that blob length (a cut or padded blob)."""
    if blob_len < PREFIX_SIZE:
        raise IntegrityError()
    return message_plaintext_size(blob_len - HEADER_SIZE)


def chunk_offset(k: int) -> int:
    """Blob offset at which chunk ``k`` starts."""
    if k < 0:
        raise ValueError("chunk index must not be negative")
    return PREFIX_SIZE + k * ENC_CHUNK_SIZE


def chunk_span(plaintext_len: int, first: int, last: int) -> tuple[int, int]:
    """``(blob offset, byte length)`` of plaintext chunks ``first..last``
    inclusive, for a file of ``plaintext_len`` bytes.

    A range read of plaintext bytes ``a..b`` needs chunks ``a // CHUNK_SIZE``
    to ``b // CHUNK_SIZE``. The file's last chunk (index
    ``plaintext_len // CHUNK_SIZE``) is shorter than the others. ValueError if
    the run lies outside the file.
    """
    if plaintext_len < 0 or not 0 <= first <= last:
        raise ValueError("bad chunk run")
    return chunk_offset(first), run_size(first, last - first + 1, plaintext_len)
