"""A witness's decisions (C2SP tlog-witness ``add-checkpoint``), without I/O.

A witness keeps, per log (per origin), the last checkpoint it cosigned. Given
a new checkpoint and a consistency proof from the size it says it last
cosigned, it cosigns only if the checkpoint is signed by the log's key and
extends that state append-only. Everything else is refused with the status
the protocol assigns, and the state is never touched:

=====  ==================================================================
403    no valid signature by the log's key
404    the origin is not a log this witness follows
400    the old size is above the checkpoint's size (pull mode: a rollback —
       the log now shows a smaller tree than one already cosigned)
409    the old size is not the size last cosigned (the caller's view is
       stale); :attr:`WitnessRefusal.known_size` says the right one
422    a malformed proof or empty tree; a proof that does not verify, or the
       same size with another root: a **fork**
=====  ==================================================================

:class:`WitnessCore` returns the new state and the cosignature line; the
caller persists the state *before* handing the cosignature out, and runs one
decision at a time per origin (the check and the write are one step).
"""

from __future__ import annotations

import base64
import binascii
import json
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from filestore.audit.checkpoint import Checkpoint, parse_and_verify, peek_checkpoint
from filestore.audit.cosignature import cosign, note_text
from filestore.audit.errors import AuditVerificationError
from filestore.audit.merkle import EMPTY_ROOT, verify_consistency

__all__ = [
    "STATE_FORMAT",
    "LogKey",
    "LogState",
    "WitnessCore",
    "WitnessRefusal",
    "dump_state",
    "format_request",
    "load_state",
    "parse_request",
]

STATE_FORMAT = "filestore-witness-state/1"
_MAX_PROOF = 63
_OLD = re.compile(r"^old (0|[1-9][0-9]{0,18})$")


class WitnessRefusal(Exception):
    """The witness will not cosign. ``status`` is the tlog-witness HTTP
    status, ``kind`` one of ``unknown-log``, ``bad-signature``,
    ``malformed``, ``rollback``, ``stale``, ``fork``."""

    def __init__(self, status: int, kind: str, message: str, known_size: int | None = None):
        super().__init__(message)
        self.status, self.kind, self.message, self.known_size = status, kind, message, known_size


@dataclass(frozen=True)
class LogKey:
    """A log the witness follows: its origin and its signing key (the key
    name is the one in its vkey, which need not equal the origin for logs
    begun under the legacy identity)."""

    origin: str
    key_name: str
    public_key: Ed25519PublicKey


@dataclass(frozen=True)
class LogState:
    """The last checkpoint cosigned for one origin (the note as the log
    signed it, for the record)."""

    size: int
    root: bytes
    note: str


def _refuse(status: int, kind: str, message: str, known: int | None = None) -> WitnessRefusal:
    return WitnessRefusal(status, kind, message, known)


class WitnessCore:
    """One witness: its name and key, the logs it follows, its state."""

    def __init__(
        self,
        name: str,
        key: Ed25519PrivateKey,
        logs: Sequence[LogKey],
        state: Mapping[str, LogState] | None = None,
    ) -> None:
        self.name, self.key = name, key
        self.logs = {log.origin: log for log in logs}
        self.state: dict[str, LogState] = dict(state or {})

    def known_size(self, origin: str) -> int:
        found = self.state.get(origin)
        return 0 if found is None else found.size

    def check(self, old_size: int, proof: Sequence[bytes], note: str) -> Checkpoint:
        """The checkpoint in ``note`` if it may be cosigned given the state;
        WitnessRefusal (with the protocol's status) if not."""
        try:
            origin = peek_checkpoint(note).origin
        except AuditVerificationError as exc:
            raise _refuse(400, "malformed", f"not a checkpoint: {exc.reason}") from None
        log = self.logs.get(origin)
        if log is None:
            raise _refuse(404, "unknown-log", f"{origin!r} is not a log this witness follows")
        try:
            cp = parse_and_verify(note, log.public_key, log.key_name)
        except AuditVerificationError as exc:
            raise _refuse(403, "bad-signature", f"log {origin!r}: {exc.reason}") from None
        known = self.state.get(origin)
        if old_size > cp.size:
            if known is not None and old_size == known.size:
                raise _refuse(
                    400,
                    "rollback",
                    f"ROLLBACK of log {origin!r}: it shows size {cp.size}, smaller than "
                    f"size {known.size} already cosigned",
                )
            raise _refuse(400, "malformed", f"old size {old_size} exceeds size {cp.size}")
        if old_size != self.known_size(origin):
            raise _refuse(
                409,
                "stale",
                f"old size {old_size} is not the size last cosigned for {origin!r}",
                self.known_size(origin),
            )
        if cp.size == 0 and cp.root != EMPTY_ROOT:
            raise _refuse(422, "malformed", "a tree of size 0 must have the empty root")
        if known is None or old_size == 0:
            if proof:
                raise _refuse(422, "malformed", "a proof from size 0 must be empty")
            return cp
        if cp.size == known.size:
            if cp.root != known.root:
                raise _refuse(
                    422,
                    "fork",
                    f"FORK of log {origin!r}: size {cp.size} has root "
                    f"{base64.b64encode(cp.root).decode()} but "
                    f"{base64.b64encode(known.root).decode()} was cosigned",
                )
            return cp
        if len(proof) > _MAX_PROOF:
            raise _refuse(422, "malformed", "a consistency proof has at most 63 hashes")
        try:
            verify_consistency(known.size, cp.size, known.root, cp.root, proof)
        except AuditVerificationError as exc:
            raise _refuse(
                422,
                "fork",
                f"FORK of log {origin!r}: size {cp.size} is not an extension of size "
                f"{known.size} already cosigned ({exc.reason})",
            ) from None
        return cp

    def add_checkpoint(
        self, old_size: int, proof: Sequence[bytes], note: str, now: float
    ) -> tuple[str, LogState, str]:
        """Decide on ``note``: (origin, the state to persist, the cosignature
        line) or WitnessRefusal. Does not change :attr:`state`; call
        :meth:`commit` once the new state is on disk."""
        cp = self.check(old_size, proof, note)
        text = note_text(note)[0]
        line = cosign(text, self.key, self.name, max(1, int(now)))
        return cp.origin, LogState(cp.size, cp.root, note), line

    def commit(self, origin: str, state: LogState) -> None:
        self.state[origin] = state


# ------------------------------------------------------------ wire formats
def parse_request(body: bytes) -> tuple[int, list[bytes], str]:
    """(old size, proof, checkpoint note) of an ``add-checkpoint`` body;
    WitnessRefusal(400) if it is malformed."""
    try:
        text = body.decode("utf-8")
    except UnicodeDecodeError:
        raise _refuse(400, "malformed", "the request is not UTF-8") from None
    head, sep, note = text.partition("\n\n")
    lines = head.split("\n")
    match = _OLD.match(lines[0])
    if not sep or match is None:
        raise _refuse(400, "malformed", "the request starts with 'old <size>' and a blank line")
    if len(lines) - 1 > _MAX_PROOF:
        raise _refuse(400, "malformed", "a consistency proof has at most 63 hashes")
    proof = []
    for line in lines[1:]:
        try:
            raw = base64.b64decode(line, validate=True)
        except (ValueError, binascii.Error):
            raw = b""
        if len(raw) != 32:
            raise _refuse(400, "malformed", "a proof line is one base64 SHA-256 hash")
        proof.append(raw)
    return int(match.group(1)), proof, note


def format_request(old_size: int, proof: Sequence[bytes], note: str) -> bytes:
    """The ``add-checkpoint`` body for ``note``."""
    lines = [f"old {old_size}"] + [base64.b64encode(p).decode("ascii") for p in proof]
    return ("\n".join(lines) + "\n\n" + note).encode("utf-8")


def dump_state(state: Mapping[str, LogState]) -> bytes:
    logs = {
        origin: {"size": s.size, "root": base64.b64encode(s.root).decode(), "note": s.note}
        for origin, s in sorted(state.items())
    }
    return (json.dumps({"format": STATE_FORMAT, "logs": logs}, indent=1) + "\n").encode()


def load_state(data: bytes) -> dict[str, LogState]:
    """The state in ``data``; ValueError if it is not a witness state file."""
    obj = json.loads(data)
    if not isinstance(obj, dict) or obj.get("format") != STATE_FORMAT:
        raise ValueError(f"not a {STATE_FORMAT} file")
    state = {}
    for origin, entry in obj["logs"].items():
        root = base64.b64decode(entry["root"], validate=True)
        size = entry["size"]
        if len(root) != 32 or not isinstance(size, int) or size < 0:
            raise ValueError(f"bad state for {origin!r}")
        state[origin] = LogState(size, root, str(entry["note"]))
    return state
