"""Audit records: canonical encoding, hash chain, strict parsing, validation."""

from __future__ import annotations

import dataclasses
import hashlib
import json
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from filestore.audit import (
    GENESIS_HASH,
    AuditRecord,
    AuditVerificationError,
    decode_record,
    encode_record,
    new_record,
)
from filestore.audit._time import format_time, parse_time, round_ms
from filestore.errors import FilestoreError

T0 = 1_800_000_000.0  # 2027-01-15T08:00:00Z


def deletion(prev: AuditRecord | None = None, **overrides: Any) -> AuditRecord:
    fields: dict[str, Any] = {
        "event": "file_deleted",
        "recorded_at": T0,
        "file_id": "AAAAAAAAAAAAAAAAAAAAAA",
        "tenant": "zürich",
        "size": 1234,
        "created_at": T0 - 10_000,
        "expires_at": T0 - 1_000,
        "deleted_at": T0 - 0.5,
        "reason": "expired",
        "backend": "local",
        "method": "crypto_erase+delete",
        "verification": {"key_erased": True, "blob_absent": True},
        "kek_id": 7,
        "actor": "node-1",
        "software_version": "0.1.0",
    }
    fields.update(overrides)
    return new_record(prev, **fields)


# The canonical encoding written out by hand: keys sorted, no spaces, UTF-8,
# times as RFC 3339 with milliseconds. Hashing it with hashlib is the
# independent reference for the record's hash.
CANONICAL_WITHOUT_HASH = (
    '{"actor":"node-1","backend":"local","created_at":"2027-01-15T05:13:20.000Z",'
    '"deleted_at":"2027-01-15T07:59:59.500Z","event":"file_deleted",'
    '"expires_at":"2027-01-15T07:43:20.000Z","file_id":"AAAAAAAAAAAAAAAAAAAAAA",'
    '"kek_id":7,"method":"crypto_erase+delete",'
    '"prev_hash":"0000000000000000000000000000000000000000000000000000000000000000",'
    '"reason":"expired","recorded_at":"2027-01-15T08:00:00.000Z","seq":1,"size":1234,'
    '"software_version":"0.1.0","tenant":"zürich",'
    '"verification":{"blob_absent":true,"key_erased":true}}'
)
# Computed with `printf %s "$CANONICAL_WITHOUT_HASH" | sha256sum`.
PINNED_HASH = "4f118ba0a366bfc3bd3b7c40a7e7ad8e1555ca75993d0ec2454f8738e78adfa3"


def test_hash_is_sha256_of_the_hand_written_canonical_encoding() -> None:
    r = deletion()
    expected = hashlib.sha256(CANONICAL_WITHOUT_HASH.encode("utf-8")).hexdigest()
    assert r.hash == expected
    assert r.recompute_hash() == expected


def test_hash_is_pinned() -> None:
    # Any change to the encoding changes every hash ever written: it must be
    # deliberate (and versioned), never a side effect.
    assert deletion().hash == PINNED_HASH


def test_stored_encoding_is_canonical_with_hash_and_raw_utf8() -> None:
    r = deletion()
    text = encode_record(r)
    assert text == CANONICAL_WITHOUT_HASH.replace('"kek_id":7', f'"hash":"{r.hash}","kek_id":7')
    assert "zürich" in text  # not \u00fc
    assert decode_record(text) == r
    assert decode_record(text.encode("utf-8")) == r


def test_chain_links_each_record_to_the_previous() -> None:
    first = deletion()
    second = deletion(first, file_id="BBBBBBBBBBBBBBBBBBBBBB")
    assert (first.seq, first.prev_hash) == (1, GENESIS_HASH)
    assert (second.seq, second.prev_hash) == (2, first.hash)
    assert second.hash == second.recompute_hash() != first.hash


def test_json_round_trip_is_exact_for_times_rounded_to_ms() -> None:
    r = deletion(recorded_at=T0 + 0.1234567, deleted_at=T0 + 0.0005, created_at=None)
    assert r.recorded_at == T0 + 0.123
    assert r.deleted_at == round_ms(T0 + 0.0005)
    assert r.created_at is None
    again = AuditRecord.from_json(json.loads(json.dumps(r.to_json())))
    assert again == r
    assert again.to_json() == r.to_json()


@settings(max_examples=300, deadline=None, database=None)
@given(st.floats(min_value=-62_135_596_800, max_value=253_402_300_799.999))
def test_times_format_and_parse_back_to_the_same_float(ts: float) -> None:
    kept = round_ms(ts)
    assert round_ms(kept) == kept
    assert parse_time(format_time(ts)) == kept
    assert format_time(kept) == format_time(ts)


@pytest.mark.parametrize(
    "text",
    [
        "2027-01-15T08:00:00Z",
        "2027-01-15T08:00:00.000+00:00",
        "2027-01-15 08:00:00.000Z",
        "2027-01-15T08:00:00.0000Z",
        "2027-02-30T08:00:00.000Z",
        "2027-01-15T08:00:60.000Z",
    ],
)
def test_other_spellings_of_a_time_are_refused(text: str) -> None:
    with pytest.raises(ValueError):
        parse_time(text)


def test_from_json_refuses_missing_and_unknown_fields() -> None:
    data = deletion().to_json()
    missing = {k: v for k, v in data.items() if k != "actor"}
    with pytest.raises(AuditVerificationError, match=r"missing fields \['actor'\]"):
        AuditRecord.from_json(missing)
    with pytest.raises(AuditVerificationError, match=r"unknown fields \['filename'\]"):
        AuditRecord.from_json({**data, "filename": "x.pdf"})


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("seq", "1"),
        ("seq", True),
        ("size", True),
        ("size", -1),
        ("recorded_at", T0),
        ("recorded_at", "2027-01-15T08:00:00Z"),
        ("verification", ["key_erased"]),
        ("tenant", 5),
        ("prev_hash", "00"),
    ],
)
def test_from_json_refuses_wrong_types(field: str, value: object) -> None:
    data = deletion().to_json()
    data[field] = value
    with pytest.raises(AuditVerificationError, match="malformed record"):
        AuditRecord.from_json(data)


def test_from_json_checks_the_hash() -> None:
    data = deletion().to_json()
    data["size"] = 1235
    with pytest.raises(AuditVerificationError, match="seq 1: record hash does not match") as info:
        AuditRecord.from_json(data)
    assert info.value.seq == 1
    assert isinstance(info.value, FilestoreError)


def test_kek_destroyed_record() -> None:
    r = new_record(
        None,
        event="kek_destroyed",
        recorded_at=T0,
        reason="kek_epoch_end",
        backend="keyring",
        method="destroy",
        actor="node-1",
        software_version="0.1.0",
        verification={"kek_absent": True},
        kek_id=41,
    )
    assert r.file_id is None and r.tenant is None
    assert AuditRecord.from_json(r.to_json()) == r
    with pytest.raises(ValueError, match="file_id"):
        dataclasses.replace(r, file_id="AAAAAAAAAAAAAAAAAAAAAA")
    with pytest.raises(ValueError, match="kek_id"):
        dataclasses.replace(r, kek_id=None)
    with pytest.raises(ValueError, match="reason"):
        dataclasses.replace(r, reason="expired")


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("event", "file_read"),
        ("reason", "kek_epoch_end"),
        ("file_id", "short"),
        ("file_id", None),
        ("tenant", "a\nb"),
        ("tenant", ""),
        # Free text (an error message) does not fit the token fields.
        ("method", "delete failed: permission denied"),
        ("verification", {"blob_absent": "S3 said: AccessDenied"}),
        ("verification", {"blob absent": True}),
        ("verification", {"retries": 3}),
        ("recorded_at", float("nan")),
        ("kek_id", -1),
    ],
)
def test_invalid_fields_are_refused(field: str, value: Any) -> None:
    with pytest.raises(ValueError, match=field.split("_")[0]):
        deletion(**{field: value})


def test_orphan_without_metadata_row() -> None:
    r = deletion(reason="orphan", tenant=None, size=None, created_at=None, expires_at=None)
    assert AuditRecord.from_json(r.to_json()) == r


def test_there_is_no_field_for_personal_data_or_secrets() -> None:
    names = {f.name for f in dataclasses.fields(AuditRecord)}
    forbidden = {"filename", "name", "content_type", "sha256", "checksum", "ip", "user_agent"}
    assert not names & forbidden
    assert not {n for n in names if "error" in n or ("key" in n and n != "kek_id")}


def test_records_are_immutable_and_hashable() -> None:
    verification = {"key_erased": True}
    r = deletion(verification=verification)
    verification["key_erased"] = False
    assert r.verification == {"key_erased": True}
    with pytest.raises(dataclasses.FrozenInstanceError):
        r.seq = 2  # type: ignore[misc]
    assert {r: 1}[deletion(verification={"key_erased": True})] == 1
