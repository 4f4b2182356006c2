"""Signed checkpoints of the log, in the C2SP tlog-checkpoint style.

After every purge pass (even one that deleted nothing, so a verifier can
judge freshness) the log's head is signed as a note whose text is::

    filestore.audit/<deployment>          origin: names the log
    1234                                  tree size (decimal, no leading zeros)
    <base64 of the 32-byte Merkle root>   RFC 6962 root over records 1..size
    chain-head <64 hex>                   hash of record ``size`` (zeros if 0)
    time 2026-11-29T03:04:05.123Z         when it was signed (ms, UTC)

followed by a blank line and the signature line (see :mod:`.note`). A
checkpoint commits to every record up to its size twice over: through the
Merkle root and through the hash chain.
"""

from __future__ import annotations

import base64
import binascii
import re
from collections.abc import Sequence
from dataclasses import dataclass

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from filestore.audit._time import format_time, parse_time, round_ms
from filestore.audit.errors import AuditVerificationError
from filestore.audit.merkle import EMPTY_ROOT, root
from filestore.audit.note import open_note, sign_note
from filestore.audit.records import GENESIS_HASH

__all__ = ["Checkpoint", "checkpoint_of", "parse_and_verify", "peek_checkpoint", "sign_checkpoint"]

ORIGIN_PREFIX = "filestore.audit/"
_HEX64 = re.compile(r"^[0-9a-f]{64}$")
_SIZE = re.compile(r"^(0|[1-9][0-9]{0,18})$")
_ORIGIN = re.compile(r"^\S+$")


@dataclass(frozen=True)
class Checkpoint:
    """A (possibly not yet signed) head of the log. ``time`` is rounded to
    ms on construction; ValueError if a field is malformed."""

    origin: str
    size: int
    root: bytes
    chain_head: str
    time: float

    def __post_init__(self) -> None:
        object.__setattr__(self, "time", round_ms(self.time))
        if not isinstance(self.origin, str) or not _ORIGIN.match(self.origin):
            raise ValueError("a checkpoint origin must be non-empty and hold no whitespace")
        if isinstance(self.size, bool) or not isinstance(self.size, int) or self.size < 0:
            raise ValueError("a checkpoint size must be a non-negative integer")
        if not isinstance(self.root, bytes) or len(self.root) != 32:
            raise ValueError("a checkpoint root must be 32 bytes")
        if not isinstance(self.chain_head, str) or not _HEX64.match(self.chain_head):
            raise ValueError("a checkpoint chain head must be 64 lowercase hex digits")
        if self.size == 0 and (self.root != EMPTY_ROOT or self.chain_head != GENESIS_HASH):
            raise ValueError("an empty log's checkpoint has the empty root and a zero chain head")

    def text(self) -> str:
        """The note text that is signed."""
        return (
            f"{self.origin}\n{self.size}\n{base64.b64encode(self.root).decode('ascii')}\n"
            f"chain-head {self.chain_head}\ntime {format_time(self.time)}\n"
        )


def checkpoint_of(origin: str, leaves: Sequence[bytes], time: float) -> Checkpoint:
    """The checkpoint of the log whose record hashes (raw bytes) are ``leaves``."""
    head = leaves[-1].hex() if leaves else GENESIS_HASH
    return Checkpoint(origin, len(leaves), root(leaves), head, time)


def sign_checkpoint(cp: Checkpoint, private_key: Ed25519PrivateKey, key_name: str) -> str:
    """The full signed note for ``cp``."""
    return sign_note(cp.text(), private_key, key_name)


def _parse_text(text: str) -> Checkpoint:
    lines = text.split("\n")
    if len(lines) != 6 or lines[5] != "":
        raise AuditVerificationError("a checkpoint has exactly five lines")
    origin, size, root_b64, head_line, time_line, _ = lines
    if not _SIZE.match(size):
        raise AuditVerificationError("a checkpoint's tree size is not a decimal number")
    try:
        root_hash = base64.b64decode(root_b64, validate=True)
    except (ValueError, binascii.Error):
        root_hash = b""
    if len(root_hash) != 32 or base64.b64encode(root_hash).decode("ascii") != root_b64:
        raise AuditVerificationError("a checkpoint's root is not 32 bytes in base64")
    if not head_line.startswith("chain-head ") or not time_line.startswith("time "):
        raise AuditVerificationError("a checkpoint lacks its chain-head or time line")
    try:
        when = parse_time(time_line[len("time ") :])
        return Checkpoint(origin, int(size), root_hash, head_line[len("chain-head ") :], when)
    except ValueError as exc:
        raise AuditVerificationError(f"malformed checkpoint: {exc}") from None


def peek_checkpoint(note: str) -> Checkpoint:
    """The checkpoint in ``note`` **without checking its signature**.

    For placing notes (the export writer, receipts); never trust what it
    returns. AuditVerificationError if the note is malformed.
    """
    if not isinstance(note, str):
        raise AuditVerificationError("a checkpoint note must be text")
    split = note.rfind("\n\n")
    if split < 0:
        raise AuditVerificationError("a checkpoint note has no signature block")
    return _parse_text(note[: split + 1])


def parse_and_verify(
    note: str, public_key: Ed25519PublicKey, key_name: str | None = None
) -> Checkpoint:
    """The checkpoint in ``note`` after checking its signature by
    ``public_key`` (under ``key_name`` if given). Raises
    AuditVerificationError on a bad or missing signature or a bad format."""
    return _parse_text(open_note(note, public_key, key_name))
