"""Encryption at rest for filestore.

* :mod:`~filestore.crypto.format` — the blob header and size/offset arithmetic;
* :mod:`~filestore.crypto.stream` — streaming encryption, random-access
  decryption (C2SP chunked encryption, suite Cobblestone-256);
* :mod:`~filestore.crypto.keyring` — key-encryption keys that wrap DEKs;
* :mod:`~filestore.crypto.sealed` — encrypted per-file metadata;
* :mod:`~filestore.crypto.signing` — the audit log's Ed25519 key.

Every integrity failure raises the one opaque
:class:`~filestore.errors.IntegrityError`. The byte format is in
``docs/format.md``. This package imports only the standard library,
``cryptography``, ``filestore.errors`` and ``filestore.clock``.
"""

from __future__ import annotations

from filestore.crypto.format import (
    CHUNK_SIZE,
    ENC_CHUNK_SIZE,
    HEADER_SIZE,
    PREFIX_SIZE,
    TAG_SIZE,
    Header,
    chunk_offset,
    chunk_span,
    ciphertext_size,
    plaintext_size,
)
from filestore.crypto.keyring import Keyring
from filestore.crypto.sealed import open_fields, seal_fields
from filestore.crypto.signing import load_or_create_signing_key, public_key_path, public_key_pem
from filestore.crypto.stream import Decryptor, Encryptor, decrypt, encrypt

__all__ = [
    "CHUNK_SIZE",
    "ENC_CHUNK_SIZE",
    "HEADER_SIZE",
    "PREFIX_SIZE",
    "TAG_SIZE",
    "Decryptor",
    "Encryptor",
    "Header",
    "Keyring",
    "chunk_offset",
    "chunk_span",
    "ciphertext_size",
    "decrypt",
    "encrypt",
    "load_or_create_signing_key",
    "open_fields",
    "plaintext_size",
    "public_key_path",
    "public_key_pem",
    "seal_fields",
]
