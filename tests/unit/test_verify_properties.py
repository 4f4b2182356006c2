"""Properties of the audit log's verification, over random logs.

``test_audit_verify.py`` names each kind of tampering on one fixed log of 30
records, and ``test_audit_merkle.py`` checks every proof of trees up to 64
leaves of fixed contents. Here hypothesis builds the logs: any mix of
deletions, orphan removals and KEK destructions, checkpoints after any
records, exported whole or as a slice, with the code in ``filestore/audit/``.
For each, the export verifies, and every mutation of it is refused: a
changed character in a record, a dropped, duplicated or swapped line, a
checkpoint that is signed but wrong. The only mutations that verify are the
ones that change no record and no signed statement: leaving out a
checkpoint that a later one covers, or repeating one in its place.

Bounded for the default run (a few seconds); ``-m long`` runs more examples.
"""

from __future__ import annotations

import base64
import hashlib
import os
from dataclasses import dataclass, replace

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from hypothesis import HealthCheck, given, note, settings
from hypothesis import strategies as st

from filestore.audit import (
    AuditRecord,
    AuditVerificationError,
    ExportHeader,
    VerifyReport,
    checkpoint_of,
    export_lines,
    sign_checkpoint,
    verify_export,
)
from filestore.audit.checkpoint import Checkpoint
from filestore.audit.entries import AuditEntry, file_deleted, kek_destroyed, orphan_deleted
from filestore.audit.export import json_line
from filestore.audit.merkle import (
    consistency_proof,
    inclusion_proof,
    root,
    verify_consistency,
    verify_inclusion,
)

KEY = Ed25519PrivateKey.from_private_bytes(hashlib.sha256(b"verify properties key").digest())
OTHER_KEY = Ed25519PrivateKey.from_private_bytes(hashlib.sha256(b"someone else").digest())
PUB = KEY.public_key()
ORIGIN = "filestore.audit/props"
T0 = 1_800_000_000.0

BOUNDED = settings(
    max_examples=40,
    deadline=None,
    database=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
LONG = settings(BOUNDED, max_examples=int(os.environ.get("FILESTORE_FUZZ_EXAMPLES", "500")))


# ------------------------------------------------------------------- logs
@dataclass
class Log:
    records: list[AuditRecord]
    notes: list[str]  # one per checkpoint size, in size order
    sizes: list[int]

    @property
    def leaves(self) -> list[bytes]:
        return [bytes.fromhex(r.hash) for r in self.records]

    @property
    def newest(self) -> float:
        return T0 + 10.0 * len(self.records) + 1


def _file_id(n: int) -> str:
    return base64.urlsafe_b64encode(hashlib.sha256(b"file %d" % n).digest()[:16]).decode()[:22]


@st.composite
def entries(draw: st.DrawFn, n: int, at: float) -> AuditEntry:
    kind = draw(st.sampled_from(["file", "file", "file", "orphan", "kek"]))
    common = {
        "backend": draw(st.sampled_from(["local", "s3"])),
        "actor": draw(st.sampled_from(["gw-1", "gw-2", "node-a"])),
        "software_version": "0.1.0",
    }
    if kind == "kek":
        return kek_destroyed(
            kek_id=n,
            created_at=at - 7200,
            destroyed_at=at,
            verification={"no_keys_remaining": draw(st.booleans())},
            **{**common, "backend": draw(st.sampled_from(["keyring", "ratchet"]))},
        )
    if kind == "orphan":
        return orphan_deleted(file_id=_file_id(n), deleted_at=at, **common)
    return file_deleted(
        file_id=_file_id(n),
        tenant=draw(st.sampled_from(["acme", "globex", "t-3"])),
        size=draw(st.none() | st.integers(0, 1 << 40)),
        created_at=at - draw(st.integers(1, 86_000)),
        expires_at=at - draw(st.integers(0, 100)),
        deleted_at=at,
        reason=draw(st.sampled_from(["expired", "client_request", "max_downloads"])),
        kek_id=draw(st.integers(1, (1 << 32) - 1)),
        **common,
    )


@st.composite
def logs(draw: st.DrawFn, max_records: int = 24) -> Log:
    """A log of 1..max_records records with checkpoints after some of them
    and always after the last."""
    n = draw(st.integers(1, max_records))
    records: list[AuditRecord] = []
    prev = None
    for i in range(1, n + 1):
        prev = draw(entries(i, T0 + 10.0 * i)).chain_after(prev)
        records.append(prev)
    sizes = sorted(set(draw(st.lists(st.integers(0, n), max_size=5))) | {n})
    leaves = [bytes.fromhex(r.hash) for r in records]
    notes = [
        sign_checkpoint(checkpoint_of(ORIGIN, leaves[:size], T0 + 10.0 * size + 1), KEY, ORIGIN)
        for size in sizes
    ]
    return Log(records, notes, sizes)


def export(log: Log, first: int = 1, last: int | None = None) -> list[str]:
    last = len(log.records) if last is None else last
    header = ExportHeader(
        first_seq=first, exported_at=log.newest + 5, partial=first > 1 or last < len(log.records)
    )
    return list(export_lines(header, log.records[first - 1 : last], log.notes, leaves=log.leaves))


def verify(log: Log, lines: list[str]) -> VerifyReport:
    return verify_export(lines, PUB, now=log.newest + 60)


def refused(log: Log, lines: list[str]) -> AuditVerificationError:
    try:
        report = verify(log, lines)
    except AuditVerificationError as exc:
        return exc
    pytest.fail(f"a tampered export verified: {report}")


def kinds(lines: list[str]) -> list[str]:
    return [line[9 : line.index('"', 9)] for line in lines]  # {"type":"<kind>",...


# -------------------------------------------------------- verification
@BOUNDED
@given(logs())
def test_every_full_export_verifies_and_is_complete(log: Log) -> None:
    report = verify(log, export(log))
    assert report.complete and report.records == len(log.records)
    assert report.first_seq == 1 and report.last_seq == len(log.records)
    assert report.latest_size == len(log.records) and report.unsigned == 0


@BOUNDED
@given(logs(), st.data())
def test_every_slice_verifies_as_partial(log: Log, data: st.DataObject) -> None:
    n = len(log.records)
    first = data.draw(st.integers(1, n))
    last = data.draw(st.integers(first - 1, n))
    if first == 1 and last == n:
        return  # the full export, above
    report = verify(log, export(log, first, last))
    assert report.records == last - first + 1 and report.first_seq == first
    assert not report.complete


# ------------------------------------------------------------- mutations
def _records_at(lines: list[str]) -> list[int]:
    return [i for i, kind in enumerate(kinds(lines)) if kind == "record"]


@BOUNDED
@given(logs(), st.data())
def test_any_changed_character_in_a_record_is_refused(log: Log, data: st.DataObject) -> None:
    lines = export(log)
    i = data.draw(st.sampled_from(_records_at(lines)))
    line = lines[i].rstrip("\n")
    pos = data.draw(st.integers(0, len(line) - 1))
    char = data.draw(
        st.characters(codec="ascii", min_codepoint=0x20).filter(lambda c: c != line[pos])
    )
    note(f"line {i + 1}: {line[pos]!r} -> {char!r} at {pos}")
    lines[i] = line[:pos] + char + line[pos + 1 :] + "\n"
    refused(log, lines)


@BOUNDED
@given(logs(), st.data())
def test_a_dropped_line_is_refused_unless_a_later_checkpoint_covers_it(
    log: Log, data: st.DataObject
) -> None:
    lines = export(log)
    i = data.draw(st.integers(0, len(lines) - 1))
    dropped = lines[:i] + lines[i + 1 :]
    if kinds(lines)[i] == "checkpoint" and i != len(lines) - 1:
        # A checkpoint is an attestation: the records it signed are under
        # the later ones too. Leaving it out changes nothing verified.
        report = verify(log, dropped)
        assert report.records == len(log.records) and report.complete
    else:
        refused(log, dropped)


@BOUNDED
@given(logs(), st.data())
def test_a_duplicated_line_is_refused_unless_a_checkpoint_repeats_in_place(
    log: Log, data: st.DataObject
) -> None:
    lines = export(log)
    i = data.draw(st.integers(0, len(lines) - 1))
    j = data.draw(st.integers(0, len(lines)))  # the copy goes before line j
    copied = [*lines[:j], lines[i], *lines[j:]]
    note(f"line {i + 1} copied before line {j + 1}")
    if kinds(lines)[i] == "checkpoint" and j in (i, i + 1):
        report = verify(log, copied)
        assert report.records == len(log.records) and report.complete
    else:
        refused(log, copied)


@BOUNDED
@given(logs(), st.data())
def test_two_swapped_lines_are_refused(log: Log, data: st.DataObject) -> None:
    lines = export(log)
    i, j = data.draw(st.lists(st.integers(0, len(lines) - 1), min_size=2, max_size=2, unique=True))
    lines[i], lines[j] = lines[j], lines[i]
    refused(log, lines)


def _forgeries(log: Log, size: int) -> dict[str, str]:
    """Signed notes that could stand where the checkpoint of ``size`` stands,
    each wrong in one way."""
    leaves = log.leaves
    right = checkpoint_of(ORIGIN, leaves[:size], T0 + 10.0 * size + 1)
    other = hashlib.sha256(b"another history").digest()

    def signed(cp: Checkpoint, key: Ed25519PrivateKey = KEY) -> str:
        return sign_checkpoint(cp, key, ORIGIN)

    forged = {
        "signed by another key": signed(right, OTHER_KEY),
        "dated in the future": signed(replace(right, time=log.newest + 3600)),
    }
    if size:
        history = [*leaves[: size - 1], other]
        forged["another history"] = signed(checkpoint_of(ORIGIN, history, right.time))
        forged["a wrong root"] = signed(replace(right, root=root(history)))
        forged["a wrong chain head"] = signed(replace(right, chain_head=other.hex()))
    if len(log.sizes) > 1:
        # One export, one log: the origin is the same throughout.
        forged["another origin"] = signed(replace(right, origin=ORIGIN + "-b"))
    return forged


@BOUNDED
@given(logs(), st.data())
def test_a_wrong_checkpoint_in_place_of_a_right_one_is_refused(
    log: Log, data: st.DataObject
) -> None:
    lines = export(log)
    at = [i for i, kind in enumerate(kinds(lines)) if kind == "checkpoint"]
    k = data.draw(st.integers(0, len(at) - 1))
    forgeries = _forgeries(log, log.sizes[k])
    how = data.draw(st.sampled_from(sorted(forgeries)))
    note(f"the checkpoint of size {log.sizes[k]}: {how}")
    lines[at[k]] = json_line("checkpoint", {"note": forgeries[how]})
    refused(log, lines)


# ---------------------------------------------------------------- proofs
leaf_lists = st.lists(st.binary(min_size=32, max_size=32), min_size=1, max_size=300)


@BOUNDED
@given(leaf_lists, st.data())
def test_consistency_proofs_between_any_two_sizes_verify(
    leaves: list[bytes], data: st.DataObject
) -> None:
    n = len(leaves)
    new = data.draw(st.integers(0, n))
    old = data.draw(st.integers(0, new))
    proof = consistency_proof(old, leaves[:new])
    verify_consistency(old, new, root(leaves[:old]), root(leaves[:new]), proof)
    if 0 < old < new:
        # Another prefix (one leaf changed) is not consistent with this tree.
        i = data.draw(st.integers(0, old - 1))
        changed = [*leaves[:i], hashlib.sha256(leaves[i]).digest(), *leaves[i + 1 : old]]
        with pytest.raises(AuditVerificationError):
            verify_consistency(old, new, root(changed), root(leaves[:new]), proof)


@BOUNDED
@given(st.lists(st.binary(min_size=32, max_size=32), min_size=1, max_size=100), st.data())
def test_inclusion_proofs_for_every_index_verify_and_fail_for_any_other_leaf(
    leaves: list[bytes], data: st.DataObject
) -> None:
    n = len(leaves)
    top = root(leaves)
    for index in range(n):
        proof = inclusion_proof(index, leaves)
        verify_inclusion(leaves[index], index, n, proof, top)
        wrong = data.draw(st.binary(min_size=32, max_size=32))
        if wrong == leaves[index]:
            wrong = hashlib.sha256(wrong).digest()
        with pytest.raises(AuditVerificationError):
            verify_inclusion(wrong, index, n, proof, top)
        if n > 1:
            # The same proof for the same leaf at another position fails too,
            # unless that position holds an equal leaf.
            other = (index + data.draw(st.integers(1, n - 1))) % n
            if leaves[other] != leaves[index]:
                with pytest.raises(AuditVerificationError):
                    verify_inclusion(leaves[index], other, n, proof, top)


# ------------------------------------------------------------------ long
@pytest.mark.long
@LONG
@given(logs(max_records=80), st.data())
def test_long_random_mutations_of_random_logs(log: Log, data: st.DataObject) -> None:
    """The mutations above, drawn at random, on longer logs."""
    lines = export(log)
    mutate = data.draw(st.sampled_from(["char", "drop", "swap"]))
    if mutate == "char":
        i = data.draw(st.sampled_from(_records_at(lines)))
        pos = data.draw(st.integers(0, len(lines[i]) - 2))
        char = data.draw(
            st.characters(codec="ascii", min_codepoint=0x20).filter(lambda c: c != lines[i][pos])
        )
        lines[i] = lines[i][:pos] + char + lines[i][pos + 1 :]
        refused(log, lines)
    elif mutate == "drop":
        i = data.draw(st.sampled_from(_records_at(lines)))
        refused(log, lines[:i] + lines[i + 1 :])
    else:
        i, j = data.draw(
            st.lists(st.sampled_from(_records_at(lines)), min_size=2, max_size=2, unique=True)
        )
        lines[i], lines[j] = lines[j], lines[i]
        refused(log, lines)
