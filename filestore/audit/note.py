"""C2SP signed notes (https://c2sp.org/signed-note), Ed25519 only.

A note is UTF-8 text ending in a newline, a blank line, then signature lines
``— <key name> <base64(4-byte key id ‖ 64-byte signature)>`` (the dash is
U+2014). The signature covers the text including its final newline and not
the blank line. A note may carry signatures by other keys (cosigners,
witnesses); :func:`open_note` ignores lines that are not by the key it is
given and fails if none is.
"""

from __future__ import annotations

import base64
import binascii
import re

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from filestore.audit.errors import AuditVerificationError
from filestore.audit.keys import check_key_name, key_id

__all__ = ["open_note", "sign_note"]

_DASH = "\u2014 "
_MAX_SIGNATURES = 100
# Control characters other than newline are refused, as in Go's x/mod/sumdb/note.
_CONTROL = re.compile(r"[\x00-\x09\x0b-\x1f\x7f]")


def _check_text(text: str) -> None:
    if not text.endswith("\n") or _CONTROL.search(text):
        raise ValueError("note text must end with a newline and hold no control characters")


def signature_line(text: str, private_key: Ed25519PrivateKey, key_name: str) -> str:
    """The signature line of ``private_key`` under ``key_name`` for ``text``."""
    check_key_name(key_name)
    _check_text(text)
    blob = key_id(key_name, private_key.public_key()) + private_key.sign(text.encode("utf-8"))
    return f"{_DASH}{key_name} {base64.b64encode(blob).decode('ascii')}\n"


def sign_note(text: str, private_key: Ed25519PrivateKey, key_name: str) -> str:
    """``text`` signed by ``private_key`` under ``key_name``, as a full note."""
    return text + "\n" + signature_line(text, private_key, key_name)


def open_note(note: str, public_key: Ed25519PublicKey, key_name: str | None = None) -> str:
    """The text of ``note`` after checking its signature by ``public_key``.

    With ``key_name`` only a signature line with that name counts; without
    it, a line under any name whose key id matches ``public_key`` does.
    Raises AuditVerificationError if the note is malformed, carries no
    signature by the key, or that signature is invalid.
    """
    if not isinstance(note, str) or not note.endswith("\n"):
        raise AuditVerificationError("a signed note must end with a newline")
    split = note.rfind("\n\n")
    if split < 0:
        raise AuditVerificationError("a signed note has no blank line before its signatures")
    text, block = note[: split + 1], note[split + 2 :]
    if _CONTROL.search(note) or not text.strip():
        raise AuditVerificationError("a signed note holds control characters or no text")
    lines = block[:-1].split("\n")
    if len(lines) > _MAX_SIGNATURES:
        raise AuditVerificationError("a signed note has too many signatures")
    found = False
    for line in lines:
        name, blob = _parse_signature_line(line)
        if key_name is not None and name != key_name:
            continue
        if blob[:4] != key_id(name, public_key):
            continue
        found = True
        try:
            public_key.verify(blob[4:], text.encode("utf-8"))
        except InvalidSignature:
            raise AuditVerificationError(f"signature by key {name!r} does not verify") from None
    if not found:
        who = f"key {key_name!r}" if key_name is not None else "the given public key"
        raise AuditVerificationError(f"the note carries no signature by {who}")
    return text


def _parse_signature_line(line: str) -> tuple[str, bytes]:
    parts = line[len(_DASH) :].split(" ")
    if not line.startswith(_DASH) or len(parts) != 2 or not parts[0]:
        raise AuditVerificationError("malformed signature line in a signed note")
    try:
        blob = base64.b64decode(parts[1], validate=True)
    except (ValueError, binascii.Error):
        raise AuditVerificationError("malformed signature line in a signed note") from None
    if len(blob) < 5:
        raise AuditVerificationError("malformed signature line in a signed note")
    return parts[0], blob
