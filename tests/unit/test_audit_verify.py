"""Exports and their offline verification: every kind of tampering is caught
at the right line, slices verify on their own, CSV is well-formed."""

from __future__ import annotations

import base64
import csv
import hashlib
import io
import json
from dataclasses import dataclass
from typing import Any

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from filestore.audit import (
    CSV_COLUMNS,
    AuditRecord,
    AuditVerificationError,
    ExportHeader,
    checkpoint_of,
    export_csv,
    export_lines,
    new_record,
    sign_checkpoint,
    verify_export,
)
from filestore.audit._time import format_time
from filestore.audit.checkpoint import Checkpoint
from filestore.audit.export import json_line

KEY = Ed25519PrivateKey.from_private_bytes(hashlib.sha256(b"audit export test key").digest())
PUB = KEY.public_key()
ORIGIN = "filestore.audit/test"
T0 = 1_800_000_000.0
N = 30
NOW = T0 + 60 * N + 120  # two minutes after the newest checkpoint


def file_id(i: int, salt: str = "") -> str:
    digest = hashlib.sha256(f"{salt}file-{i}".encode()).digest()[:16]
    return base64.urlsafe_b64encode(digest).rstrip(b"=").decode()


@dataclass
class Log:
    records: list[AuditRecord]
    notes: list[str]

    @property
    def leaves(self) -> list[bytes]:
        return [bytes.fromhex(r.hash) for r in self.records]

    def note_at(self, size: int) -> str:
        return next(n for n in self.notes if f"\n{size}\n" in n)


def build_log(n: int = N, every: int = 7, fork_after: int | None = None) -> Log:
    """``n`` deletions, a checkpoint after every ``every`` records and at the
    end; with ``fork_after`` the records after that seq differ."""
    records: list[AuditRecord] = []
    notes: list[str] = []
    prev = None
    for i in range(1, n + 1):
        salt = "fork" if fork_after is not None and i > fork_after else ""
        prev = new_record(
            prev,
            event="file_deleted",
            recorded_at=T0 + 60 * i,
            file_id=file_id(i, salt),
            tenant=f"tenant-{i % 3}",
            size=1000 + i,
            created_at=T0 - 3600,
            expires_at=T0 + 60 * i - 30,
            deleted_at=T0 + 60 * i - 1,
            reason="expired",
            backend="local",
            method="crypto_erase+delete",
            verification={"key_erased": True, "blob_absent": True},
            kek_id=3,
            actor="node-1",
            software_version="0.1.0",
        )
        records.append(prev)
        if i % every == 0 or i == n:
            leaves = [bytes.fromhex(r.hash) for r in records]
            notes.append(
                sign_checkpoint(checkpoint_of(ORIGIN, leaves, T0 + 60 * i + 1), KEY, ORIGIN)
            )
    return Log(records, notes)


LOG = build_log()


def export(
    log: Log = LOG,
    first: int = 1,
    last: int | None = None,
    *,
    since: float | None = None,
    until: float | None = None,
    notes: list[str] | None = None,
    consistency_from: int | None = None,
) -> list[str]:
    last = len(log.records) if last is None else last
    header = ExportHeader(
        first_seq=first,
        exported_at=NOW,
        since=since,
        until=until,
        partial=first > 1 or last < len(log.records),
    )
    return list(
        export_lines(
            header,
            log.records[first - 1 : last],
            log.notes if notes is None else notes,
            leaves=log.leaves,
            consistency_from=consistency_from,
        )
    )


def verify(lines: list[str], **kwargs: Any) -> Any:
    kwargs.setdefault("now", NOW)
    return verify_export(lines, PUB, **kwargs)


def obj(line: str) -> dict[str, Any]:
    data: dict[str, Any] = json.loads(line)
    return data


def record_line(lines: list[str], seq: int) -> int:
    """1-based line number of record ``seq``."""
    return next(
        i for i, x in enumerate(lines, 1) if obj(x)["type"] == "record" and obj(x)["seq"] == seq
    )


def checkpoint_line(lines: list[str], size: int) -> int:
    return next(
        i
        for i, x in enumerate(lines, 1)
        if obj(x)["type"] == "checkpoint" and f"\n{size}\n" in obj(x)["note"]
    )


def edited(line: str, **changes: Any) -> str:
    data = obj(line)
    kind = data.pop("type")
    data.update(changes)
    return json_line(kind, data)


def fails(lines: list[str], *fragments: str, **kwargs: Any) -> str:
    with pytest.raises(AuditVerificationError) as info:
        verify(lines, **kwargs)
    message = str(info.value)
    for fragment in fragments:
        assert fragment in message, message
    return message


# ------------------------------------------------------------------ sound


def test_full_export_verifies() -> None:
    lines = export()
    assert obj(lines[0])["type"] == "export"
    assert len(lines) == 1 + N + 5
    assert [checkpoint_line(lines, s) for s in (7, 14, 21, 28, 30)] == [
        record_line(lines, s) + 1 for s in (7, 14, 21, 28, 30)
    ]
    report = verify(lines)
    assert (report.records, report.checkpoints) == (N, 5)
    assert (report.first_seq, report.last_seq) == (1, N)
    assert (report.latest_size, report.latest_time) == (N, T0 + 60 * N + 1)
    assert report.complete and report.unsigned == 0 and report.origin == ORIGIN
    assert not report.trusted_checked
    # Lines without their newline, and a vkey-named key, work the same.
    assert verify([x.rstrip("\n") for x in lines], key_name=ORIGIN) == report


def test_export_lines_are_compact_json_with_type_first() -> None:
    for line in export():
        assert line.endswith("\n") and line.count("\n") == 1
        assert line.startswith('{"type":"')
        assert ", " not in line.split('"note"')[0]


# -------------------------------------------------------------- mutations


def test_edited_field_is_named() -> None:
    lines = export()
    n = record_line(lines, 10)
    lines[n - 1] = edited(lines[n - 1], size=1)
    fails(lines, f"line {n}, seq 10", "record hash does not match")


def test_edited_field_with_recomputed_own_hash_breaks_the_chain_at_the_next_record() -> None:
    lines = export()
    n = record_line(lines, 10)
    values = {k: v for k, v in obj(lines[n - 1]).items() if k != "type"}
    values["tenant"] = "someone-else"
    values["hash"] = _rehash(values)
    AuditRecord.from_json(values)  # a well-formed record with a correct own hash
    lines[n - 1] = json_line("record", values)
    fails(lines, f"line {n + 1}, seq 11", "prev_hash is not the hash of seq 10")


def _rehash(values: dict[str, Any]) -> str:
    body = {k: v for k, v in values.items() if k != "hash"}
    canonical = json.dumps(body, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    return hashlib.sha256(canonical.encode()).hexdigest()


def test_deleted_record_is_named() -> None:
    lines = export()
    n = record_line(lines, 10)
    del lines[n - 1]
    fails(lines, f"line {n}, seq 11", "expected seq 10")


def test_deleted_record_at_a_checkpoint_is_named() -> None:
    lines = export()
    n = record_line(lines, 14)
    del lines[n - 1]
    fails(lines, f"line {n}, seq 14", "records 14..14 are missing under the checkpoint of size 14")


def test_inserted_forged_record_is_named() -> None:
    lines = export()
    n = record_line(lines, 10)
    forged = new_record(
        LOG.records[9],
        event="file_deleted",
        recorded_at=T0 + 601,
        file_id=file_id(999),
        tenant="tenant-0",
        reason="client_request",
        backend="local",
        method="crypto_erase+delete",
        verification={"key_erased": True, "blob_absent": True},
        actor="node-1",
        software_version="0.1.0",
    )
    lines.insert(n, json_line("record", forged.to_json()))
    # The forgery itself is well-formed; the real seq 11 after it is where
    # the log stops adding up.
    fails(lines, f"line {n + 2}, seq 11", "seq goes back or repeats")


def test_forged_record_appended_after_the_last_checkpoint_is_unsigned() -> None:
    lines = export()
    forged = new_record(
        LOG.records[-1],
        event="file_deleted",
        recorded_at=T0 + 60 * 31,
        file_id=file_id(31),
        reason="expired",
        backend="local",
        method="crypto_erase+delete",
        verification={"key_erased": True},
        actor="node-1",
        software_version="0.1.0",
    )
    lines.append(json_line("record", forged.to_json()))
    fails(lines, f"line {len(lines)}, seq 31", "not covered by any checkpoint")
    report = verify(lines, allow_unsigned_tail=True)
    assert report.unsigned == 1 and report.last_seq == 31


def test_swapped_records_are_named() -> None:
    lines = export()
    a, b = record_line(lines, 12), record_line(lines, 13)
    lines[a - 1], lines[b - 1] = lines[b - 1], lines[a - 1]
    fails(lines, f"line {a}, seq 13", "expected seq 12")


@pytest.mark.parametrize("k", [1, 2])
def test_cut_tail_leaves_records_missing_under_the_last_checkpoint(k: int) -> None:
    lines = export()
    for seq in range(N, N - k, -1):
        del lines[record_line(lines, seq) - 1]
    n = checkpoint_line(lines, N)
    fails(lines, f"line {n}, seq {N - k + 1}", f"records {N - k + 1}..{N} are missing")


def test_cut_tail_with_its_checkpoints_is_caught_by_a_trusted_checkpoint() -> None:
    lines = export(LOG, 1, 28, notes=LOG.notes[:4])
    lines[0] = edited(lines[0], partial=False)
    verify(lines)  # within the freshness limit nothing else can tell
    fails(
        lines,
        "newest checkpoint (size 28) is behind the trusted checkpoint (size 30)",
        trusted_checkpoint=LOG.note_at(30),
    )


def test_dropped_last_checkpoint_leaves_records_unsigned() -> None:
    lines = export()
    del lines[checkpoint_line(lines, N) - 1]
    fails(lines, f"line {record_line(lines, 29)}, seq 29", "not covered by any checkpoint")


def test_altered_signature_byte_is_named() -> None:
    lines = export()
    n = checkpoint_line(lines, 14)
    note = obj(lines[n - 1])["note"]
    text, sig = note.split("\n\n")
    prefix, b64 = sig.rstrip("\n").rsplit(" ", 1)
    blob = bytearray(base64.b64decode(b64))
    blob[20] ^= 0x40
    bad = f"{text}\n\n{prefix} {base64.b64encode(bytes(blob)).decode()}\n"
    lines[n - 1] = edited(lines[n - 1], note=bad)
    fails(lines, f"line {n}:", "does not verify")


def test_altered_root_in_a_note_breaks_its_signature() -> None:
    lines = export()
    n = checkpoint_line(lines, 21)
    note = obj(lines[n - 1])["note"]
    good_root = note.split("\n")[2]
    other = base64.b64encode(hashlib.sha256(b"x").digest()).decode()
    lines[n - 1] = edited(lines[n - 1], note=note.replace(good_root, other))
    fails(lines, f"line {n}:", "does not verify")


def test_signed_checkpoint_with_a_wrong_root_is_named() -> None:
    # Someone holding the key signs a root that is not the records' root.
    lines = export()
    n = checkpoint_line(lines, 14)
    wrong = Checkpoint(ORIGIN, 14, hashlib.sha256(b"x").digest(), LOG.records[13].hash, T0 + 841)
    lines[n - 1] = edited(lines[n - 1], note=sign_checkpoint(wrong, KEY, ORIGIN))
    fails(lines, f"line {n}, seq 14", "root does not match the records up to seq 14")


def test_replayed_old_export_is_stale() -> None:
    lines = export(LOG, 1, 14, notes=LOG.notes[:2])
    # Relabelled as a full export made when its newest checkpoint was signed.
    lines[0] = edited(lines[0], partial=False, exported_at=format_time(T0 + 60 * 14 + 1))
    assert verify(lines, now=T0 + 60 * 14 + 60).latest_size == 14
    n = checkpoint_line(lines, 14)
    fails(lines, f"line {n}:", "stale", now=NOW + 3 * 3600)


def test_old_checkpoint_replayed_as_the_newest_is_out_of_place() -> None:
    lines = export()
    lines.append(lines[checkpoint_line(lines, 7) - 1])
    fails(lines, f"line {len(lines)}:", "checkpoint of size 7 is out of place after seq 30")


def test_checkpoint_from_the_future_is_refused() -> None:
    fails(export(), "dated in the future", now=T0)


def test_fork_against_a_trusted_checkpoint_is_named() -> None:
    fork = build_log(fork_after=10)
    trusted = fork.note_at(14)
    lines = export()
    fails(
        lines,
        f"line {record_line(lines, 14)}, seq 14",
        "differs from the trusted checkpoint",
        trusted_checkpoint=trusted,
    )
    # Before the fork point both histories agree.
    assert verify(lines, trusted_checkpoint=fork.note_at(7)).trusted_checked


def test_trusted_checkpoint_must_be_valid() -> None:
    other = Ed25519PrivateKey.generate()
    foreign = sign_checkpoint(checkpoint_of(ORIGIN, LOG.leaves[:7], T0), other, ORIGIN)
    fails(export(), "the trusted checkpoint is invalid", trusted_checkpoint=foreign)


def test_every_trusted_size_of_a_full_export_is_checked_from_the_records() -> None:
    lines = export()
    for size in range(0, N + 1):
        cp = checkpoint_of(ORIGIN, LOG.leaves[:size], T0 + 60 * size + 1)
        assert verify(lines, trusted_checkpoint=sign_checkpoint(cp, KEY, ORIGIN)).trusted_checked


def test_a_second_checkpoint_from_another_history_is_refused() -> None:
    # Two signed heads of size 28 with different roots (the key holder
    # equivocating): the second cannot be tied to the first.
    fork = build_log(fork_after=27)
    lines = export(LOG, 1, 27, notes=[*LOG.notes[:3], LOG.note_at(28)])
    lines.append(export(fork, 1, 27, notes=[fork.note_at(28)])[-1])
    fails(lines, f"line {len(lines)}:", "checkpoint of size 28 is not tied to the records")


# ------------------------------------------------------------------ slices


@pytest.mark.parametrize(("first", "last"), [(10, 20), (2, 2), (8, 14), (15, 30), (1, 6), (29, 29)])
def test_slices_verify_on_their_own(first: int, last: int) -> None:
    lines = export(LOG, first, last)
    report = verify(lines)
    assert (report.first_seq, report.last_seq, report.records) == (first, last, last - first + 1)
    assert report.latest_size == N
    assert report.complete == (first == 1 and last == N)


def test_time_window_slice() -> None:
    since, until = T0 + 60 * 10, T0 + 60 * 21
    lines = export(LOG, 10, 20, since=since, until=until)
    header = obj(lines[0])
    assert header["partial"] and header["since"] == "2027-01-15T08:10:00.000Z"
    assert verify(lines).records == 11
    # Records may stray outside the window by the clock skew allowance
    # (records 19 and 20 here), no more.
    lines[0] = edited(lines[0], until="2027-01-15T08:14:30.000Z")
    assert verify(lines, max_skew=331).records == 11
    fails(lines, f"line {record_line(lines, 20)}, seq 20", "outside the export's since/until")


def test_empty_slice_is_tied_to_the_checkpoint() -> None:
    lines = export(LOG, 11, 10)
    report = verify(lines)
    assert report.records == 0 and report.last_seq is None and report.latest_size == N


def test_slice_with_a_forged_frontier_is_caught_at_its_first_checkpoint() -> None:
    lines = export(LOG, 10, 20)
    frontier = obj(lines[0])["frontier"]
    frontier[0] = hashlib.sha256(b"forged").hexdigest()
    lines[0] = edited(lines[0], frontier=frontier)
    fails(lines, f"line {checkpoint_line(lines, 14)}, seq 14", "root does not match")


def test_slice_with_a_forged_ahead_proof_is_caught() -> None:
    lines = export(LOG, 10, 20)
    n = checkpoint_line(lines, 21)
    proof = obj(lines[n - 1])["consistency"]
    proof[-1] = hashlib.sha256(b"forged").hexdigest()
    lines[n - 1] = edited(lines[n - 1], consistency=proof)
    fails(lines, f"line {n}:", "checkpoint of size 21 is not tied to the records")


def test_slice_must_declare_itself_partial() -> None:
    lines = export(LOG, 10, 20)
    lines[0] = edited(lines[0], partial=False)
    fails(lines, "line 1:", "must be partial")
    lines = export(LOG, 1, 20)
    lines[0] = edited(lines[0], partial=False)
    n = checkpoint_line(lines, 21)
    fails(lines, f"line {n}, seq 21", "records 21..21 are missing", "claims to be complete")


def test_slice_against_trusted_checkpoints() -> None:
    inside = verify(export(LOG, 10, 20), trusted_checkpoint=LOG.note_at(14))
    assert inside.trusted_checked
    after = verify(export(LOG, 10, 20), trusted_checkpoint=LOG.note_at(28))
    assert after.trusted_checked  # compared with the export's own checkpoint of size 28
    fails(
        export(LOG, 10, 20),
        "cannot be tied to the trusted checkpoint (size 7)",
        trusted_checkpoint=LOG.note_at(7),
    )
    proved = export(LOG, 10, 20, consistency_from=7)
    assert "consistency_from" in obj(proved[-1])
    assert verify(proved, trusted_checkpoint=LOG.note_at(7)).trusted_checked
    fork = build_log(fork_after=3)
    fails(proved, "is not a prefix", trusted_checkpoint=fork.note_at(7))
    # A trusted size beyond the slice that is not one of its checkpoints.
    at_25 = sign_checkpoint(checkpoint_of(ORIGIN, LOG.leaves[:25], T0 + 60 * 25), KEY, ORIGIN)
    fails(export(LOG, 10, 20), "cannot be tied", trusted_checkpoint=at_25)
    assert verify(
        export(LOG, 10, 20, consistency_from=25), trusted_checkpoint=at_25
    ).trusted_checked


def test_writer_refuses_inconsistent_input() -> None:
    header = ExportHeader(first_seq=1, exported_at=NOW)
    with pytest.raises(ValueError, match="seq 3 where seq 2"):
        list(export_lines(header, [LOG.records[0], LOG.records[2]], LOG.notes, leaves=LOG.leaves))
    with pytest.raises(ValueError, match="beyond the last record of a non-partial export"):
        list(export_lines(header, LOG.records[:10], LOG.notes, leaves=LOG.leaves))
    with pytest.raises(ValueError, match="needed"):
        list(export_lines(ExportHeader(first_seq=5, exported_at=NOW, partial=True), [], LOG.notes))
    with pytest.raises(ValueError, match="partial"):
        ExportHeader(first_seq=5, exported_at=NOW, partial=False)


# ----------------------------------------------------------- malformed


@pytest.mark.parametrize(
    ("mutate", "fragment"),
    [
        (lambda ls: ls[1:], "line 1: the first line is not an export header"),
        (lambda ls: [ls[0], ls[0], *ls[1:]], "line 2: a second export header"),
        (lambda ls: [*ls, '{"type":"comment"}\n'], "unknown line type"),
        (lambda ls: [*ls, "not json\n"], "not valid JSON"),
        (lambda ls: [*ls, "[" * 100_000 + "]" * 100_000 + "\n"], "not valid JSON"),
        (lambda ls: [*ls, '{"type":"checkpoint","note":"x","note":"y"}\n'], "duplicate key"),
        (lambda ls: [ls[0].replace('"first_seq":1', '"first_seq":1.0'), *ls[1:]], "line 1:"),
        (lambda ls: [edited(ls[0], format="other/1"), *ls[1:]], "line 1:"),
        (lambda ls: [ls[0], *(x for x in ls[1:] if '"checkpoint"' not in x)], "no checkpoint"),
        (lambda ls: [], "empty export"),
    ],
)
def test_malformed_exports(mutate: Any, fragment: str) -> None:
    fails(mutate(export()), fragment)


def test_blank_lines_are_ignored() -> None:
    lines = export()
    lines.insert(5, "\n")
    assert verify(lines).records == N


# --------------------------------------------------------------------- CSV


def test_csv_export() -> None:
    records = [*LOG.records[:3]]
    rows = list(csv.reader(io.StringIO("".join(export_csv(records)))))
    assert tuple(rows[0]) == CSV_COLUMNS
    assert len(rows) == 4
    first = dict(zip(CSV_COLUMNS, rows[1], strict=True))
    assert first["seq"] == "1" and first["recorded_at"] == "2027-01-15T08:01:00.000Z"
    assert first["verification"] == "blob_absent=true;key_erased=true"
    assert first["hash"] == records[0].hash
    assert "".join(export_csv(records)).count("\r\n") == 4


def test_csv_neutralises_formula_cells() -> None:
    dash_id = next(file_id(i) for i in range(1000) if file_id(i).startswith("-"))
    record = new_record(
        None,
        event="file_deleted",
        recorded_at=T0,
        file_id=dash_id,
        tenant="=HYPERLINK(1)",
        reason="orphan",
        backend="local",
        method="crypto_erase+delete",
        verification={},
        actor="node-1",
        software_version="0.1.0",
    )
    row = list(csv.reader(io.StringIO("".join(export_csv([record])))))[1]
    cells = dict(zip(CSV_COLUMNS, row, strict=True))
    assert cells["file_id"] == "'" + dash_id
    assert cells["tenant"] == "'=HYPERLINK(1)"
    assert cells["size"] == "" and cells["verification"] == ""
