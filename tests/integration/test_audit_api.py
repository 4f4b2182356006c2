"""The audit log end to end: purge, export over HTTP, verify offline (in
process and with the ``filestore audit`` CLI), receipts."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from filestore import auditlog
from filestore.audit import load_verifier, parse_and_verify, verify_export, verify_receipt
from filestore.metadata.base import Role
from scheduler.runner import PurgeScheduler
from tests.support.gateway import Gateway

PROBLEM = "application/problem+json"


async def _purged_log(gateway: Gateway, count: int = 4) -> list[str]:
    made = []
    for i in range(count):
        meta = await gateway.upload(b"doc %d" % i, params={"ttl": "60", "filename": "secret.pdf"})
        made.append(meta["id"])
    gateway.clock.advance(61)
    await PurgeScheduler(gateway.services).run_pass()
    return made


async def _export(gateway: Gateway, **params: str) -> str:
    auditor = await gateway.auth("audit", Role.AUDITOR)
    resp = await gateway.client.get("/v1/audit/deletions", params=params, headers=auditor)
    assert resp.status == 200, await resp.text()
    return await resp.text()


async def _public_key(gateway: Gateway) -> str:
    resp = await gateway.client.get("/v1/audit/public-key")
    assert resp.status == 200
    return await resp.text()


async def test_export_verifies_offline(gateway: Gateway) -> None:
    made = await _purged_log(gateway)
    text = await _export(gateway)
    assert "secret.pdf" not in text
    key, name = load_verifier(await _public_key(gateway))
    report = verify_export(text.splitlines(), key, now=gateway.clock.now())
    assert report.records == 4 and report.complete
    records = [json.loads(line) for line in text.splitlines() if '"type":"record"' in line]
    assert sorted(r["file_id"] for r in records) == sorted(made)
    # The vkey form names the key and verifies the same export.
    vkey = await (await gateway.client.get("/v1/audit/public-key?format=vkey")).text()
    key2, name2 = load_verifier(vkey.strip())
    # Its name is the log's origin (derived from the key: none is configured).
    assert name2 == report.origin == auditlog.derived_origin(gateway.services.signing_key)
    assert name is None
    verify_export(text.splitlines(), key2, key_name=name2, now=gateway.clock.now())


async def test_csv_export(gateway: Gateway) -> None:
    await _purged_log(gateway, 2)
    text = await _export(gateway, format="csv")
    rows = text.strip().splitlines()
    assert rows[0].startswith("seq,event,recorded_at,file_id")
    assert len(rows) == 3


async def test_slice_and_trusted_checkpoint(gateway: Gateway) -> None:
    auditor = await gateway.auth("audit", Role.AUDITOR)
    await _purged_log(gateway, 3)
    kept = await (await gateway.client.get("/v1/audit/checkpoint", headers=auditor)).text()
    key, _ = load_verifier(await _public_key(gateway))
    kept_cp = parse_and_verify(kept, key)
    assert kept_cp.size == 3
    gateway.clock.advance(3600)
    middle = gateway.clock.now()
    await _purged_log(gateway, 3)
    gateway.clock.advance(3600)
    await _purged_log(gateway, 2)
    # A slice of the middle hour verifies on its own.
    part = await _export(gateway, since=str(middle), until=str(middle + 1800))
    report = verify_export(part.splitlines(), key, now=gateway.clock.now())
    assert (report.records, report.first_seq, report.complete) == (3, 4, False)
    # The whole log is consistent with the checkpoint kept earlier.
    full = await _export(gateway, consistency_from=str(kept_cp.size))
    report = verify_export(full.splitlines(), key, trusted_checkpoint=kept, now=gateway.clock.now())
    assert report.trusted_checked and report.records == 8


async def test_export_needs_auditor_and_sane_arguments(gateway: Gateway) -> None:
    resp = await gateway.client.get("/v1/audit/deletions", headers=await gateway.auth())
    assert resp.status == 403 and resp.content_type == PROBLEM
    auditor = await gateway.auth("audit", Role.AUDITOR)
    for params in (
        {"format": "xml"},
        {"since": "yesterday"},
        {"consistency_from": "-1"},
        {"color": "red"},
        {"consistency_from": "999"},
    ):
        resp = await gateway.client.get("/v1/audit/deletions", params=params, headers=auditor)
        assert resp.status == 400 and resp.content_type == PROBLEM, params


async def test_receipts(gateway: Gateway) -> None:
    meta = await gateway.upload(b"receipt me", params={"ttl": "60"})
    url = f"/v1/files/{meta['id']}/receipt"
    early = await gateway.client.get(url, headers=await gateway.auth())
    assert early.status == 409 and early.content_type == PROBLEM
    gateway.clock.advance(61)
    await PurgeScheduler(gateway.services).run_pass()
    other = await gateway.client.get(url, headers=await gateway.auth("globex"))
    assert other.status == 404
    resp = await gateway.client.get(url, headers=await gateway.auth())
    assert resp.status == 200 and resp.content_type == "text/plain"
    receipt = await resp.text()
    key, _ = load_verifier(await _public_key(gateway))
    record = verify_receipt(receipt, key, file_id=meta["id"], tenant="acme")
    assert record.file_id == meta["id"] and record.reason == "expired"
    # A tlog-proof: nothing of other tenants' records, only the record and
    # sibling hashes; the checkpoint note as the log serves it.
    lines = receipt.split("\n")
    assert lines[0] == "c2sp.org/tlog-proof@v1" and lines[2] == f"index {record.seq - 1}"
    latest = await gateway.client.get(
        "/v1/audit/checkpoint", headers=await gateway.auth(role=Role.AUDITOR)
    )
    assert receipt.endswith("\n\n" + await latest.text())
    tampered = receipt.replace(lines[2], f"index {record.seq}")
    with pytest.raises(Exception, match=r"(?i)index|leaf"):
        verify_receipt(tampered, key)


def _cli(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "filestore", "audit", *args],
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=60,
    )


async def test_cli_verify_and_mutations(gateway: Gateway, tmp_path: Path) -> None:
    await _purged_log(gateway, 5)
    text = await _export(gateway)
    (tmp_path / "key.pem").write_text(await _public_key(gateway))
    now = str(gateway.clock.now())
    good = tmp_path / "export.jsonl"
    good.write_text(text)
    ok = _cli("verify", str(good), "--public-key", "key.pem", "--now", now, cwd=tmp_path)
    assert ok.returncode == 0, ok.stderr
    assert "OK: 5 records" in ok.stdout

    lines = text.splitlines()
    record_lines = [i for i, line in enumerate(lines) if '"type":"record"' in line]
    edited = list(lines)
    target = record_lines[2]
    edited[target] = edited[target].replace('"reason":"expired"', '"reason":"orphan"')
    swapped = list(lines)
    a, b = record_lines[1], record_lines[2]
    swapped[a], swapped[b] = swapped[b], swapped[a]
    mutations = {
        "edit": edited,
        "delete": [line for i, line in enumerate(lines) if i != record_lines[1]],
        "swap": swapped,
        "cut tail": lines[: record_lines[-1]],
    }
    for name, mutated in mutations.items():
        bad = tmp_path / f"{name}.jsonl"
        bad.write_text("\n".join(mutated) + "\n")
        result = _cli("verify", str(bad), "--public-key", "key.pem", "--now", now, cwd=tmp_path)
        assert result.returncode == 1, (name, result.stdout)
        assert "FAILED" in result.stderr and "line" in result.stderr, (name, result.stderr)
