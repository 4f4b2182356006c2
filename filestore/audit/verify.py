"""Offline verification of a JSONL export (see :mod:`.export` for the layout).

:func:`verify_export` streams the lines once, in O(log n) memory, and checks:

1. every record's hash against its contents, and the chain: ``seq``
   consecutive from the header's ``first_seq``, each ``prev_hash`` the hash
   of the record before (the header's ``prev_hash`` for the first);
2. every checkpoint's signature, and that its root is the Merkle root the
   records give at its size and its chain head the hash of record ``size``
   (through the proofs it carries when it lies beyond the last record);
3. that every record is covered by a checkpoint, that no records are missing
   under a checkpoint in a non-partial export, and that the newest
   checkpoint is no older than ``max_age`` (a cut tail or a replayed export
   shows up as one of these);
4. with a trusted checkpoint an auditor kept from before: that the export's
   history extends it (same root at its size, or a consistency proof);
5. that checkpoint times never run backwards (beyond ``CHECKPOINT_SKEW``);
6. with witnesses given: every cosignature by one of them, on any
   checkpoint, verifies and is dated neither before its checkpoint nor in
   the future; and the newest checkpoint carries at least ``min_witnesses``
   of them (a quorum rules out a split view of everything up to it, since
   every older checkpoint and record is tied to it by the checks above).

Beside the bytes, every record is held to the promise it records
(:mod:`.promise`): deleted within 24 hours of upload, consistent with its
reason and times, every verification flag true, one record per file. Those
findings do not stop the pass; they are listed in the report's
``violations``, so an auditor sees all of them.

The first failure raises :class:`~.errors.AuditVerificationError` naming the
line and, where there is one, the seq.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from filestore.audit._lines import (
    CHECKPOINT_KEYS,
    HEADER_KEYS,
    hashes,
    load,
    non_negative,
    time_or_none,
)
from filestore.audit.checkpoint import Checkpoint, parse_and_verify, peek_checkpoint
from filestore.audit.cosignature import Witness, count_cosignatures
from filestore.audit.errors import AuditVerificationError
from filestore.audit.export import EXPORT_FORMAT
from filestore.audit.frontier import Frontier
from filestore.audit.merkle import verify_consistency, verify_inclusion
from filestore.audit.promise import PromiseCheck, Violation
from filestore.audit.records import GENESIS_HASH, AuditRecord

__all__ = [
    "CHECKPOINT_SKEW",
    "VerifyReport",
    "Violation",
    "check_witnesses",
    "require_quorum",
    "verify_export",
]

#: How far one checkpoint's time may lie before the previous one's: the
#: instances that sign them keep their clocks within this of the database's.
CHECKPOINT_SKEW = 5.0
#: Violations kept in a report (all are counted).
MAX_VIOLATIONS = 1000


@dataclass(frozen=True)
class VerifyReport:
    """What a successful verification established.

    ``complete`` is True when the export is not marked partial, starts at
    seq 1 and reaches its newest checkpoint, which is no older than the
    export: it then proves the whole log up to that checkpoint. (Whether
    that checkpoint is the log's newest only a fresher one can tell: a
    trusted checkpoint or a witness.)
    ``unsigned`` counts records after the last checkpoint (only possible with
    ``allow_unsigned_tail=True``); they are chained but not signed.
    ``violations`` lists (up to ``MAX_VIOLATIONS`` of ``violation_count``)
    records that are sound but break the promise they record.
    """

    records: int
    checkpoints: int
    first_seq: int
    last_seq: int | None
    latest_size: int
    latest_time: float
    origin: str
    complete: bool
    trusted_checked: bool
    unsigned: int
    violations: tuple[Violation, ...] = ()
    violation_count: int = 0
    witnessed_by: tuple[str, ...] = ()


def check_witnesses(
    note: str, witnesses: Sequence[Witness], now: float, max_skew: float = 300
) -> tuple[str, ...]:
    """The names of ``witnesses`` with a valid cosignature on ``note``.
    AuditVerificationError if one of theirs does not verify, or is dated
    before the checkpoint or after ``now`` (beyond ``max_skew``)."""
    if not witnesses:
        return ()
    cp_time = peek_checkpoint(note).time
    found = count_cosignatures(
        note, witnesses, not_before=cp_time - max_skew, not_after=now + max_skew
    )
    return tuple(sorted(found))


def require_quorum(size: int, names: Sequence[str], min_witnesses: int) -> None:
    """AuditVerificationError unless ``names`` holds ``min_witnesses``."""
    if len(names) < min_witnesses:
        raise AuditVerificationError(
            f"witness quorum not met: the newest checkpoint (size {size}) carries "
            f"{len(names)} valid cosignature(s) from the given witnesses, {min_witnesses} "
            "required; a split view is not ruled out"
        )


class _Verifier:
    """The state of one pass over an export: the Merkle frontier of the
    records so far, the last record's hash, and what the checkpoints seen so
    far have covered. Each ``on_*`` method raises at the first problem."""

    def __init__(
        self,
        public_key: Ed25519PublicKey,
        key_name: str | None,
        trusted: Checkpoint | None,
        now: float,
        max_age: float,
        max_skew: float,
        witnesses: Sequence[Witness] = (),
    ) -> None:
        self.witnesses: Sequence[Witness] = witnesses
        self.key, self.key_name, self.trusted = public_key, key_name, trusted
        self.now, self.max_age, self.max_skew = now, max_age, max_skew
        self.header = False
        self.first_seq = 1
        self.partial = False
        self.since: float | None = None
        self.until: float | None = None
        self.exported_at = 0.0
        self.tree = Frontier()
        self.last_hash = GENESIS_HASH
        self.records = 0
        self.checkpoints = 0
        self.covered = 0  # records up to this size are under a verified checkpoint
        self.unsigned_from: tuple[int, int] | None = None  # (line, seq) of the first unsigned
        self.ahead: tuple[int, bytes] | None = None  # last verified checkpoint beyond the records
        self.last_cp_size = -1
        self.origin: str | None = None
        self.latest: tuple[Checkpoint, int] | None = None  # largest size, then newest
        self.latest_witnesses: tuple[str, ...] = ()
        self.freshest: tuple[float, int] | None = None  # newest time and its line
        self.trusted_checked = trusted is None
        self.promise = PromiseCheck(max_skew)
        self.violations: list[Violation] = []
        self.violation_count = 0
        self.last_cp_time: float | None = None

    @property
    def pos(self) -> int:
        return self.tree.size

    # ------------------------------------------------------------- lines
    def line(self, number: int, text: str) -> None:
        obj = load(text)
        kind = obj["type"]
        if not self.header:
            if kind != "export":
                raise AuditVerificationError("the first line is not an export header")
            self.on_header(obj)
        elif kind == "record":
            self.on_record(obj, number)
        elif kind == "checkpoint":
            self.on_checkpoint(obj, number)
        elif kind == "export":
            raise AuditVerificationError("a second export header")
        else:
            raise AuditVerificationError("unknown line type")

    def on_header(self, obj: dict[str, Any]) -> None:
        if set(obj) != HEADER_KEYS or obj["format"] != EXPORT_FORMAT:
            raise AuditVerificationError(f"not a {EXPORT_FORMAT} header")
        first = non_negative(obj["first_seq"], "first_seq")
        prev = obj["prev_hash"]
        [prev_bytes] = hashes([prev], "prev_hash")
        frontier = hashes(obj["frontier"], "frontier")
        if first < 1 or not isinstance(obj["partial"], bool):
            raise AuditVerificationError("first_seq or partial is malformed")
        self.since, self.until = (
            time_or_none(obj["since"], "since"),
            time_or_none(obj["until"], "until"),
        )
        exported_at = time_or_none(obj["exported_at"], "exported_at")
        if exported_at is None:
            raise AuditVerificationError("exported_at is missing")
        self.exported_at = exported_at
        self.partial = obj["partial"]
        if not self.partial and (self.since is not None or self.until is not None or first != 1):
            raise AuditVerificationError("a time-bounded or later-starting export must be partial")
        if first == 1:
            if prev != GENESIS_HASH or frontier:
                raise AuditVerificationError(
                    "an export from seq 1 has a zero prev_hash and no frontier"
                )
        else:
            self.tree = Frontier.from_hashes(first - 2, frontier)
            self.tree.append(prev_bytes)
        self.header, self.first_seq, self.last_hash = True, first, prev
        self.covered = self.pos
        self.check_trusted_at_position()

    def on_record(self, obj: dict[str, Any], number: int) -> None:
        del obj["type"]
        try:
            record = AuditRecord.from_json(obj)
        except AuditVerificationError as exc:
            raise exc.at(line=number) from None
        seq = record.seq
        if self.ahead is not None:
            raise AuditVerificationError("a record after a checkpoint beyond the records", seq=seq)
        expected = self.pos + 1
        if seq < expected:
            raise AuditVerificationError(
                f"seq goes back or repeats (expected seq {expected})", seq=seq
            )
        if seq > expected:
            raise AuditVerificationError(
                f"expected seq {expected}: records {expected}..{seq - 1} "
                "are missing or out of order",
                seq=seq,
            )
        if record.prev_hash != self.last_hash:
            what = (
                "the header's prev_hash" if seq == self.first_seq else f"the hash of seq {seq - 1}"
            )
            raise AuditVerificationError(f"prev_hash is not {what}: the chain is broken", seq=seq)
        # A window selects a seq range; with several instances' clocks the
        # records inside it may stray a little outside the window.
        t, slack = record.recorded_at, self.max_skew
        if (self.since is not None and t < self.since - slack) or (
            self.until is not None and t >= self.until + slack
        ):
            raise AuditVerificationError(
                f"recorded_at lies more than {slack:g} s outside the export's since/until", seq=seq
            )
        self.tree.append(bytes.fromhex(record.hash))
        self.last_hash = record.hash
        self.records += 1
        for reason in self.promise.check(record):
            self.violation_count += 1
            if len(self.violations) < MAX_VIOLATIONS:
                self.violations.append(Violation(seq, number, reason))
        if self.unsigned_from is None:
            self.unsigned_from = (number, seq)
        self.check_trusted_at_position(seq)

    def check_trusted_at_position(self, seq: int | None = None) -> None:
        t = self.trusted
        if t is None or t.size != self.pos:
            return
        if self.tree.root() != t.root or self.last_hash != t.chain_head:
            raise AuditVerificationError(
                f"the log at size {t.size} differs from the trusted checkpoint "
                "(a forked or rewritten history)",
                seq=seq,
            )
        self.trusted_checked = True

    def on_checkpoint(self, obj: dict[str, Any], number: int) -> None:
        if not set(obj) <= CHECKPOINT_KEYS or not isinstance(obj.get("note"), str):
            raise AuditVerificationError("malformed checkpoint line")
        cp = parse_and_verify(obj["note"], self.key, self.key_name)
        size, pos = cp.size, self.pos
        witnessed = check_witnesses(obj["note"], self.witnesses, self.now, self.max_skew)
        where = f"checkpoint of size {size}"
        if self.origin is None:
            self.origin = cp.origin
        elif cp.origin != self.origin:
            raise AuditVerificationError(f"{where} is for another log (origin differs)")
        if size < self.last_cp_size or size < pos:
            raise AuditVerificationError(
                f"{where} is out of place after seq {pos}: a checkpoint follows the record "
                "at its size (an old checkpoint replayed?)"
            )
        if cp.time > self.now + self.max_skew:
            raise AuditVerificationError(f"{where} is dated in the future")
        if self.last_cp_time is not None and cp.time < self.last_cp_time - CHECKPOINT_SKEW:
            raise AuditVerificationError(
                f"{where} is dated before the checkpoint preceding it: checkpoint times "
                "run backwards"
            )
        self.last_cp_time = max(cp.time, self.last_cp_time or cp.time)
        if size == pos and self.ahead is None:
            if cp.root != self.tree.root():
                raise AuditVerificationError(
                    f"{where}: its root does not match the records up to seq {pos}", seq=pos or None
                )
            if cp.chain_head != self.last_hash:
                raise AuditVerificationError(
                    f"{where}: its chain head is not the hash of seq {pos}", seq=pos or None
                )
            self.covered, self.unsigned_from = pos, None
        else:
            self.check_ahead(cp, obj, pos)
        self.check_trusted_against(cp, obj.get("consistency_from"))
        self.last_cp_size = size
        self.checkpoints += 1
        if self.latest is None or (size, cp.time) >= (self.latest[0].size, self.latest[0].time):
            self.latest = (cp, number)
            self.latest_witnesses = witnessed
        if self.freshest is None or cp.time >= self.freshest[0]:
            self.freshest = (cp.time, number)

    def check_ahead(self, cp: Checkpoint, obj: dict[str, Any], pos: int) -> None:
        """A checkpoint beyond the last record: tie it in through its proofs."""
        size = cp.size
        if "consistency" not in obj or "head_proof" not in obj:
            raise AuditVerificationError(
                f"records {pos + 1}..{size} are missing under the checkpoint of size {size}",
                seq=pos + 1,
            )
        if not self.partial:
            raise AuditVerificationError(
                f"records {pos + 1}..{size} are missing under the checkpoint of size {size} "
                "in an export that claims to be complete",
                seq=pos + 1,
            )
        base_size, base_root = self.ahead if self.ahead is not None else (pos, self.tree.root())
        try:
            verify_consistency(
                base_size, size, base_root, cp.root, hashes(obj["consistency"], "consistency")
            )
            verify_inclusion(
                bytes.fromhex(cp.chain_head),
                size - 1,
                size,
                hashes(obj["head_proof"], "head_proof"),
                cp.root,
            )
        except AuditVerificationError as exc:
            raise AuditVerificationError(
                f"checkpoint of size {size} is not tied to the records: {exc.reason}"
            ) from None
        self.ahead = (size, cp.root)
        self.covered, self.unsigned_from = pos, None

    def check_trusted_against(self, cp: Checkpoint, extra: Any) -> None:
        t = self.trusted
        if t is None:
            return
        if t.origin != cp.origin:
            raise AuditVerificationError("the trusted checkpoint is for another log")
        if t.size == cp.size:
            if t.root != cp.root:
                raise AuditVerificationError(
                    f"checkpoint of size {cp.size} differs from the trusted checkpoint (a fork)"
                )
            self.trusted_checked = True
        if extra is None:
            return
        if not isinstance(extra, dict) or set(extra) != {"size", "proof"}:
            raise AuditVerificationError("malformed consistency_from")
        if non_negative(extra["size"], "consistency_from size") != t.size:
            return  # a proof for some other trusted size: nothing to check
        try:
            verify_consistency(
                t.size, cp.size, t.root, cp.root, hashes(extra["proof"], "consistency_from")
            )
        except AuditVerificationError as exc:
            raise AuditVerificationError(
                f"the trusted checkpoint (size {t.size}) is not a prefix of the checkpoint of "
                f"size {cp.size}: {exc.reason}"
            ) from None
        self.trusted_checked = True

    # -------------------------------------------------------------- end
    def finish(self, last_line: int, allow_unsigned: bool, min_witnesses: int) -> VerifyReport:
        if not self.header:
            raise AuditVerificationError("empty export: no header", line=1)
        if self.latest is None or self.freshest is None or self.origin is None:
            raise AuditVerificationError(
                "the export holds no checkpoint: nothing in it is signed", line=last_line
            )
        latest, latest_line = self.latest
        if self.unsigned_from is not None and not allow_unsigned:
            line, seq = self.unsigned_from
            raise AuditVerificationError(
                "this and the following records are not covered by any checkpoint",
                line=line,
                seq=seq,
            )
        newest_time, newest_line = self.freshest
        if not self.partial and newest_time < self.exported_at - self.max_skew:
            # An export signs a checkpoint as it is made: a full one whose
            # newest checkpoint predates it lost its tail.
            raise AuditVerificationError(
                "the newest checkpoint is older than the export: the records after it "
                "were cut off",
                line=newest_line,
            )
        if newest_time < self.now - self.max_age:
            raise AuditVerificationError(
                f"stale: the newest checkpoint is older than {self.max_age:g} s; "
                "the log may have been cut or an old export replayed",
                line=newest_line,
            )
        t = self.trusted
        if t is not None and not self.trusted_checked:
            if t.size > latest.size:
                why = (
                    f"the export's newest checkpoint (size {latest.size}) is behind the trusted "
                    f"checkpoint (size {t.size}): the log was rolled back or cut"
                )
            else:
                why = (
                    f"the export cannot be tied to the trusted checkpoint (size {t.size}): it "
                    f"starts at seq {self.first_seq} and carries no consistency proof from it"
                )
            raise AuditVerificationError(why, line=latest_line)
        try:
            require_quorum(latest.size, self.latest_witnesses, min_witnesses)
        except AuditVerificationError as exc:
            raise exc.at(line=latest_line) from None
        last_seq = self.pos if self.records else None
        return VerifyReport(
            records=self.records,
            checkpoints=self.checkpoints,
            first_seq=self.first_seq,
            last_seq=last_seq,
            latest_size=latest.size,
            latest_time=latest.time,
            origin=self.origin,
            complete=not self.partial and self.first_seq == 1 and self.pos >= latest.size,
            trusted_checked=t is not None,
            unsigned=self.pos - self.covered,
            violations=tuple(self.violations),
            violation_count=self.violation_count,
            witnessed_by=self.latest_witnesses,
        )


def verify_export(
    lines: Iterable[str],
    public_key: Ed25519PublicKey,
    *,
    key_name: str | None = None,
    trusted_checkpoint: str | None = None,
    now: float,
    max_age: float = 2 * 3600,
    max_skew: float = 300,
    allow_unsigned_tail: bool = False,
    witnesses: Sequence[Witness] = (),
    min_witnesses: int = 0,
) -> VerifyReport:
    """Verify a JSONL export offline; raise AuditVerificationError at the
    first problem, or return what was established.

    ``lines`` may keep or drop their line endings; blank lines are skipped.
    ``trusted_checkpoint`` is a signed note the auditor kept (it must verify
    under the same key). ``now`` is the verifier's clock: the newest
    checkpoint must be no older than ``max_age`` seconds before it and none
    more than ``max_skew`` seconds after it. Records after the last
    checkpoint are an error unless ``allow_unsigned_tail``, in which case the
    report counts them in ``unsigned``. With ``witnesses``, their
    cosignatures are checked wherever they appear, and the newest checkpoint
    must carry ``min_witnesses`` of them (the report's ``witnessed_by``).
    """
    if min_witnesses > len({w.name for w in witnesses}):
        raise ValueError("min_witnesses exceeds the number of witnesses given")
    trusted = None
    if trusted_checkpoint is not None:
        try:
            trusted = parse_and_verify(trusted_checkpoint, public_key, key_name)
        except AuditVerificationError as exc:
            raise AuditVerificationError(
                f"the trusted checkpoint is invalid: {exc.reason}"
            ) from None
    v = _Verifier(public_key, key_name, trusted, now, max_age, max_skew, witnesses)
    number = 0
    for number, raw in enumerate(lines, start=1):
        text = raw.rstrip("\r\n")
        if not text.strip():
            continue
        try:
            v.line(number, text)
        except AuditVerificationError as exc:
            raise exc.at(line=number) from None
    return v.finish(number, allow_unsigned_tail, min_witnesses)
