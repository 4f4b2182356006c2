"""The Ed25519 key that signs the deletion log's checkpoints and receipts.

It is separate from the keyring: it protects the audit trail, not file
contents, and its public half is published (an endpoint and a PEM file beside
the private key) so auditors can verify exports offline.

Files: the private key as PKCS#8 PEM (mode 0600, refused if group or others
may access it) and ``<stem>.pub.pem`` beside it, SubjectPublicKeyInfo PEM,
mode 0644. Both are written atomically. :func:`load_or_create_signing_key`
does blocking file I/O; call it from a thread in async code.
"""

from __future__ import annotations

import logging
from pathlib import Path

from cryptography.exceptions import UnsupportedAlgorithm
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from filestore.crypto._files import ensure_private_dir, read_private_file, write_private_file
from filestore.errors import ConfigError

__all__ = ["load_or_create_signing_key", "public_key_path", "public_key_pem"]

log = logging.getLogger(__name__)


def public_key_path(path: Path) -> Path:
    """Where the public key of the private key at ``path`` is published."""
    return path.with_name(path.stem + ".pub.pem")


def public_key_pem(key: Ed25519PrivateKey) -> bytes:
    """The public half of ``key`` as SubjectPublicKeyInfo PEM."""
    return key.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )


def _private_pem(key: Ed25519PrivateKey) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )


def _parse(path: Path, raw: bytes) -> Ed25519PrivateKey:
    # The error is raised outside the ``except`` so nothing holding the key
    # text is chained to it.
    key: object
    try:
        key = serialization.load_pem_private_key(raw, password=None)
    except (ValueError, TypeError, UnsupportedAlgorithm):
        key = None
    if not isinstance(key, Ed25519PrivateKey):
        raise ConfigError(f"signing key file {path} is not an unencrypted Ed25519 PKCS#8 PEM key")
    return key


def load_or_create_signing_key(path: Path) -> Ed25519PrivateKey:
    """Load the signing key at ``path``, or generate and store one if missing.

    Also (re)writes the public key file if it is missing or stale; if that
    fails for a key that already existed (a read-only secret mount), a warning
    is logged and the key is still returned. Blocking.
    """
    try:
        raw = read_private_file(path)
    except FileNotFoundError:
        raw = None
    if raw is None:
        ensure_private_dir(path.parent)
        key = Ed25519PrivateKey.generate()
        try:
            write_private_file(path, _private_pem(key), replace=False)
        except FileExistsError:
            key = _parse(path, read_private_file(path))  # another process won
        write_private_file(public_key_path(path), public_key_pem(key), 0o644)
        return key
    key = _parse(path, raw)
    pub_path = public_key_path(path)
    pem = public_key_pem(key)
    try:
        current = pub_path.read_bytes()
    except FileNotFoundError:
        current = None
    if current != pem:
        try:
            write_private_file(pub_path, pem, 0o644)
        except OSError as exc:
            log.warning("could not write public key file %s: %s", pub_path, exc.strerror)
    return key
