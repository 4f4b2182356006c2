"""Verifier keys: C2SP signed-note key ids, ``vkey`` strings, PEM loading.

The audit log is signed with one Ed25519 key
(:mod:`filestore.crypto.signing`). Auditors get its public half either as the
PEM file published beside the private key or as a C2SP *verifier key*::

    <name>+<8 hex digits of key id>+<base64(0x01 ‖ 32-byte public key)>

where the key id is the first four bytes of
``SHA-256(name ‖ "\\n" ‖ 0x01 ‖ public key)`` (0x01 = Ed25519). A vkey names
the key, so a verifier loaded from one knows which signature line is its own.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import re

from cryptography.exceptions import UnsupportedAlgorithm
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from filestore.audit.errors import AuditVerificationError

__all__ = [
    "check_key_name",
    "key_id",
    "load_public_key",
    "load_verifier",
    "parse_verifier_key",
    "raw_public_key",
    "verifier_key_string",
]

ALG_ED25519 = b"\x01"
_BAD_NAME = re.compile(r"[\s+]")


def check_key_name(name: str) -> None:
    """ValueError unless ``name`` is a valid signed-note key name
    (non-empty, no whitespace, no ``+``)."""
    if not isinstance(name, str) or not name or _BAD_NAME.search(name):
        raise ValueError("a key name must be non-empty, without spaces or '+'")


def raw_public_key(public_key: Ed25519PublicKey) -> bytes:
    return public_key.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)


def key_id(name: str, public_key: Ed25519PublicKey, alg: bytes = ALG_ED25519) -> bytes:
    """The 4-byte signed-note key id of ``public_key`` under ``name``, for
    the signature type ``alg`` (0x01 for a plain Ed25519 note signature,
    0x04 for a cosignature/v1: the same key yields a different id per type,
    so a verifier can never mistake one kind of signature for the other)."""
    data = name.encode("utf-8") + b"\n" + alg + raw_public_key(public_key)
    return hashlib.sha256(data).digest()[:4]


def verifier_key_string(name: str, public_key: Ed25519PublicKey, alg: bytes = ALG_ED25519) -> str:
    """The C2SP vkey ``<name>+<hex key id>+<base64(alg ‖ key)>``."""
    check_key_name(name)
    material = base64.b64encode(alg + raw_public_key(public_key)).decode("ascii")
    return f"{name}+{key_id(name, public_key, alg).hex()}+{material}"


def parse_verifier_key(vkey: str, alg: bytes = ALG_ED25519) -> tuple[str, Ed25519PublicKey]:
    """The name and key of a vkey string of signature type ``alg``;
    AuditVerificationError if it is malformed, of another type, or its key
    id does not match."""
    parts = vkey.strip().split("+", 2)
    if len(parts) != 3:
        raise AuditVerificationError("a verifier key has the form name+keyid+base64")
    name, hex_id, material = parts
    try:
        check_key_name(name)
        kid = bytes.fromhex(hex_id) if re.fullmatch(r"[0-9a-f]{8}", hex_id) else b""
        raw = base64.b64decode(material, validate=True)
    except (ValueError, binascii.Error):
        raise AuditVerificationError("malformed verifier key") from None
    if len(kid) != 4 or len(raw) != 33:
        raise AuditVerificationError("verifier key is malformed or not an Ed25519 key")
    if raw[:1] != alg:
        raise AuditVerificationError(
            f"verifier key has signature type 0x{raw[0]:02x}, not 0x{alg[0]:02x}"
            + (" (a witness's cosignature key?)" if alg == ALG_ED25519 else "")
        )
    key = Ed25519PublicKey.from_public_bytes(raw[1:])
    if key_id(name, key, alg) != kid:
        raise AuditVerificationError("verifier key id does not match its name and key")
    return name, key


def load_verifier(data: str | bytes) -> tuple[Ed25519PublicKey, str | None]:
    """A public key from SubjectPublicKeyInfo PEM (name None) or a vkey
    string (with its name). AuditVerificationError if it is neither."""
    text = data.decode("utf-8", "replace") if isinstance(data, bytes) else data
    if "-----BEGIN" not in text:
        name, key = parse_verifier_key(text)
        return key, name
    loaded: object
    try:
        loaded = serialization.load_pem_public_key(text.encode("utf-8"))
    except (ValueError, TypeError, UnsupportedAlgorithm):
        loaded = None
    if not isinstance(loaded, Ed25519PublicKey):
        raise AuditVerificationError("not an Ed25519 public key in PEM form")
    return loaded, None


def load_public_key(data: str | bytes) -> Ed25519PublicKey:
    """:func:`load_verifier` without the name."""
    return load_verifier(data)[0]
