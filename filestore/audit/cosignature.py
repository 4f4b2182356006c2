"""Witness cosignatures of checkpoints (C2SP tlog-cosignature, Ed25519 v1).

A witness that has checked a checkpoint is consistent with everything it saw
of the log before adds one signature line to the note::

    — <witness name> base64(key id ‖ u64 big-endian timestamp ‖ signature)

The key id is ``SHA-256(name ‖ 0x0A ‖ 0x04 ‖ public key)[:4]`` (type 0x04,
not the log's 0x01, so a cosignature can never pass for a log signature),
and the Ed25519 signature covers::

    cosignature/v1
    time <timestamp, decimal seconds>
    <the checkpoint's text, up to and including its last newline>

A cosignature is a statement by the witness: as of that time, this is the
largest tree it has seen for the origin, and it is consistent with all it
saw before. A verifier that requires a quorum of known witnesses on the
checkpoint it trusts rules out a split view: the log cannot show one history
to the witnesses and another to an auditor. Witnesses are named and keyed by
C2SP vkeys of type 0x04; lines from keys the verifier was not given are
ignored.
"""

from __future__ import annotations

import base64
import binascii
import struct
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from filestore.audit.errors import AuditVerificationError
from filestore.audit.keys import check_key_name, key_id, parse_verifier_key, verifier_key_string

__all__ = [
    "ALG_COSIGNATURE",
    "Witness",
    "cosign",
    "cosignature_lines",
    "count_cosignatures",
    "note_text",
    "parse_witness_key",
    "signed_message",
    "witness_vkey",
]

#: The signed-note signature type of an Ed25519 cosignature/v1.
ALG_COSIGNATURE = b"\x04"
_DASH = "\u2014 "
_MAX_TIMESTAMP = (1 << 63) - 1
_BLOB_SIZE = 4 + 8 + 64


@dataclass(frozen=True)
class Witness:
    """A witness a verifier trusts: its name and cosignature key."""

    name: str
    public_key: Ed25519PublicKey

    @property
    def key_id(self) -> bytes:
        return key_id(self.name, self.public_key, ALG_COSIGNATURE)

    def vkey(self) -> str:
        return verifier_key_string(self.name, self.public_key, ALG_COSIGNATURE)


def witness_vkey(name: str, public_key: Ed25519PublicKey) -> str:
    """The C2SP vkey of a witness: ``<name>+<hex key id>+<base64(0x04 ‖ key)>``."""
    return Witness(name, public_key).vkey()


def parse_witness_key(vkey: str) -> Witness:
    """A witness from its vkey; AuditVerificationError if it is malformed or
    not a cosignature (type 0x04) key."""
    name, key = parse_verifier_key(vkey, ALG_COSIGNATURE)
    return Witness(name, key)


def signed_message(text: str, timestamp: int) -> bytes:
    """What a cosignature's Ed25519 signature covers, for checkpoint ``text``."""
    if isinstance(timestamp, bool) or not 0 <= timestamp <= _MAX_TIMESTAMP:
        raise ValueError("a cosignature timestamp is a u64 below 2^63")
    return f"cosignature/v1\ntime {timestamp}\n{text}".encode()


def cosign(text: str, private_key: Ed25519PrivateKey, name: str, timestamp: int) -> str:
    """The cosignature line (with its newline) of the witness ``name`` for
    the checkpoint ``text`` (the note without its signatures), at
    ``timestamp`` (POSIX seconds, which must not be zero)."""
    check_key_name(name)
    if not text.endswith("\n") or "\n\n" in text:
        raise ValueError("cosign the checkpoint text: lines ending in a newline, no blank line")
    if timestamp == 0:
        raise ValueError("a witness's cosignature carries the time it was made")
    signature = private_key.sign(signed_message(text, timestamp))
    blob = key_id(name, private_key.public_key(), ALG_COSIGNATURE)
    blob += struct.pack(">Q", timestamp) + signature
    return f"{_DASH}{name} {base64.b64encode(blob).decode('ascii')}\n"


def note_text(note: str) -> tuple[str, list[str]]:
    """The text of a signed note and its signature lines (each without its
    newline). AuditVerificationError if there is no signature block."""
    if not isinstance(note, str) or not note.endswith("\n"):
        raise AuditVerificationError("a signed note must end with a newline")
    split = note.rfind("\n\n")
    if split < 0:
        raise AuditVerificationError("a signed note has no blank line before its signatures")
    return note[: split + 1], note[split + 2 : -1].split("\n")


def _timestamp(line: str, witness: Witness) -> tuple[int, bytes] | None:
    """(timestamp, signature) of ``line`` if it is by ``witness``, else None."""
    if not line.startswith(_DASH):
        return None
    parts = line[len(_DASH) :].split(" ")
    if len(parts) != 2 or parts[0] != witness.name:
        return None
    try:
        blob = base64.b64decode(parts[1], validate=True)
    except (ValueError, binascii.Error):
        return None
    if blob[:4] != witness.key_id:
        return None
    if len(blob) != _BLOB_SIZE:
        raise AuditVerificationError(
            f"cosignature by witness {witness.name!r} is malformed (not a cosignature/v1)"
        )
    (timestamp,) = struct.unpack(">Q", blob[4:12])
    return timestamp, blob[12:]


def cosignature_lines(note: str, witnesses: Iterable[Witness]) -> dict[str, int]:
    """Check every cosignature in ``note`` by one of ``witnesses``; return
    witness name → timestamp of its valid cosignature.

    Lines by other keys are ignored. A line whose name and key id match a
    given witness but whose signature does not verify (or whose timestamp is
    out of range) raises AuditVerificationError: such a note is malformed,
    and a witness's word that fails to check is not to be glossed over.
    """
    text, lines = note_text(note)
    found: dict[str, int] = {}
    for witness in witnesses:
        for line in lines:
            parsed = _timestamp(line, witness)
            if parsed is None:
                continue
            timestamp, signature = parsed
            if timestamp == 0 or timestamp > _MAX_TIMESTAMP:
                raise AuditVerificationError(
                    f"cosignature by witness {witness.name!r} has no valid timestamp"
                )
            try:
                witness.public_key.verify(signature, signed_message(text, timestamp))
            except InvalidSignature:
                raise AuditVerificationError(
                    f"cosignature by witness {witness.name!r} does not verify"
                ) from None
            found[witness.name] = max(timestamp, found.get(witness.name, 0))
    return found


def count_cosignatures(
    note: str, witnesses: Sequence[Witness], *, not_before: float, not_after: float
) -> dict[str, int]:
    """:func:`cosignature_lines`, also refusing a cosignature dated before
    ``not_before`` (the checkpoint's own time, less the allowed skew: no
    witness can have seen it earlier) or after ``not_after`` (the verifier's
    clock plus the skew)."""
    found = cosignature_lines(note, witnesses)
    for name, timestamp in found.items():
        if timestamp < not_before:
            raise AuditVerificationError(
                f"cosignature by witness {name!r} is dated before the checkpoint it signs"
            )
        if timestamp > not_after:
            raise AuditVerificationError(f"cosignature by witness {name!r} is dated in the future")
    return found
