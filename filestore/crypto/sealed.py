"""Sealed per-file metadata: file name, content type, checksum.

These fields live in the database row, but only encrypted under a key derived
from the file's DEK. So the database never holds them in clear, and the
crypto-erase that deletes the DEK makes them unreadable together with the
contents. The key is ``HKDF-Expand-SHA-512(prk=dek,
info="filestore/v1/file-metadata", 32 bytes)`` — never the DEK itself, and
domain-separated from the payload key by its info string.

Format: ``0x01 ‖ nonce(12) ‖ AES-256-GCM(canonical JSON ‖ padding)`` with AAD
``"filestore/v1/file-metadata" ‖ 0x00 ‖ file_id``, which binds a sealed value
to its file: moved to another row, it fails to open. The JSON (sorted keys, no
spaces, UTF-8) is padded with spaces to a multiple of 64 bytes so the
ciphertext length shows only roughly how long a file name is.
"""

from __future__ import annotations

import json
from typing import Any, Final

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.hkdf import HKDFExpand

from filestore.crypto.entropy import random_bytes
from filestore.errors import IntegrityError

__all__ = ["FieldValue", "open_fields", "seal_fields"]

FieldValue = str | int | None

VERSION: Final = 1
LABEL: Final = b"filestore/v1/file-metadata"
NONCE_SIZE: Final = 12
TAG_SIZE: Final = 16
PAD_TO: Final = 64


def _aead(dek: bytes) -> AESGCM:
    if len(dek) != 32:
        raise ValueError("a DEK is 32 bytes")
    return AESGCM(HKDFExpand(hashes.SHA512(), 32, LABEL).derive(dek))


def _aad(file_id: bytes) -> bytes:
    return LABEL + b"\x00" + file_id


def _valid(fields: object) -> bool:
    return isinstance(fields, dict) and all(
        isinstance(k, str) and (v is None or isinstance(v, str) or type(v) is int)
        for k, v in fields.items()
    )


def seal_fields(dek: bytes, file_id: bytes, fields: dict[str, FieldValue]) -> bytes:
    """Encrypt ``fields`` for the row of ``file_id``.

    Values are strings, integers or None (not bools or floats, so the encoding
    stays canonical); ValueError otherwise.
    """
    if not _valid(fields):
        raise ValueError("sealed fields map strings to str, int or None")
    text = json.dumps(fields, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    plain = text.encode("utf-8")
    plain += b" " * (-len(plain) % PAD_TO)
    nonce = random_bytes(NONCE_SIZE)
    return bytes([VERSION]) + nonce + _aead(dek).encrypt(nonce, plain, _aad(file_id))


def open_fields(dek: bytes, file_id: bytes, sealed: bytes) -> dict[str, FieldValue]:
    """Decrypt fields sealed by :func:`seal_fields` for the same DEK and file.

    IntegrityError if the value was altered, belongs to another file or DEK,
    or has an unknown version.
    """
    if len(sealed) < 1 + NONCE_SIZE + TAG_SIZE or sealed[0] != VERSION or len(dek) != 32:
        raise IntegrityError()
    nonce, ct = sealed[1 : 1 + NONCE_SIZE], sealed[1 + NONCE_SIZE :]
    plain: bytes | None
    try:
        plain = _aead(dek).decrypt(nonce, ct, _aad(file_id))
    except InvalidTag:
        plain = None
    if plain is None:
        raise IntegrityError()
    fields: Any
    try:
        fields = json.loads(plain)
    except ValueError:  # authentic but unparsable: a writer bug, reported alike
        fields = None
    if not _valid(fields):
        raise IntegrityError()
    result: dict[str, FieldValue] = fields
    return result
