"""Two witnesses (real ``filestore audit witness`` processes) against a real
``filestore serve``: they cosign the honest log, the gateway serves and
exports their cosignatures, the verifier counts them; then the key holder
forks the log in the database and re-signs it, and rolls it back, and both
witnesses refuse without touching their state."""

from __future__ import annotations

import base64
import json
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp

from filestore.audit import new_record, peek_checkpoint
from filestore.audit.cosignature import cosignature_lines, parse_witness_key
from filestore.audit.records import encode_record
from filestore.auth import create_key
from filestore.metadata.base import Role
from tests.support import db
from tests.support.instances import Shared, free_port
from tests.support.standalone import Standalone, standalone_server


def cli(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "filestore", *args],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


@dataclass
class WitnessDir:
    name: str
    state_dir: Path
    vkey: str

    @classmethod
    def make(cls, root: Path, name: str) -> WitnessDir:
        state_dir = root / name.replace("/", "_")
        done = cli(
            "audit", "witness", "--state-dir", str(state_dir), "--name", name, "--print-vkey"
        )
        assert done.returncode == 0, done.stderr
        return cls(name, state_dir, done.stdout.strip())

    def state(self) -> bytes:
        return (self.state_dir / "state.json").read_bytes()

    def once(self, srv: Standalone, log_vkey: str, token: Path) -> subprocess.CompletedProcess[str]:
        return cli(
            "audit", "witness", "--state-dir", str(self.state_dir), "--name", self.name,
            "--log-key", log_vkey, "--url", srv.url, "--token-file", str(token), "--once",
        )  # fmt: skip


#: The server's settings: no pass of its own in the test's time (the test
#: runs them), so nothing re-signs a checkpoint behind a witness's back.
SETTINGS = {"FILESTORE_KEY_SCHEDULE": "keyring", "FILESTORE_PURGE_INTERVAL": "3600",
            "FILESTORE_MAX_TTL": "3600"}  # fmt: skip


def run_pass(srv: Standalone) -> None:
    """One purge pass by ``filestore purge`` (it signs a checkpoint at its end)."""
    shared = Shared(srv.database_url, srv.data_dir.parent / "secrets", {}, SETTINGS)
    env = shared.env(srv.data_dir, free_port(), [])
    done = cli("purge", env=env)
    assert done.returncode == 0, done.stdout + done.stderr


async def delete_files(http: aiohttp.ClientSession, srv: Standalone, count: int) -> list[str]:
    auth = {"Authorization": f"Bearer {srv.client_key}"}
    ids = []
    for i in range(count):
        async with http.post(f"{srv.url}/v1/files", data=b"x" * (i + 1), headers=auth) as resp:
            assert resp.status == 201, await resp.text()
            ids.append((await resp.json())["id"])
    for file_id in ids:
        async with http.delete(f"{srv.url}/v1/files/{file_id}", headers=auth) as resp:
            assert resp.status in (200, 204), await resp.text()
    return ids


async def get_text(http: aiohttp.ClientSession, url: str, token: str) -> str:
    async with http.get(url, headers={"Authorization": f"Bearer {token}"}) as resp:
        assert resp.status == 200, await resp.text()
        return await resp.text()


async def forge_from(srv: Standalone, seq: int) -> None:
    """The key holder's rewrite: records ``seq`` and after replaced by a
    consistent chain with other sizes. The database's append-only triggers
    are no obstacle to whoever administers it."""
    async with srv.store() as store:
        await db.execute(store, "DROP TRIGGER IF EXISTS audit_log_no_update")
        await db.execute(store, "DROP TRIGGER IF EXISTS audit_log_no_delete")
        records = await store.audit.records(0, 10_000)
        prev = records[seq - 2] if seq > 1 else None
        for old in records[seq - 1 :]:
            fields: dict[str, Any] = old.to_json()
            for drop in ("seq", "prev_hash", "hash"):
                fields.pop(drop)
            fields["size"] = (fields["size"] or 0) + 1000
            for name in ("recorded_at", "created_at", "expires_at", "deleted_at"):
                fields[name] = getattr(old, name)
            forged = new_record(prev, **fields)
            await db.execute(
                store,
                "UPDATE audit_log SET hash = :h, body = :b WHERE seq = :s",
                h=forged.hash,
                b=encode_record(forged),
                s=forged.seq,
            )
            prev = forged


async def test_two_witnesses_cosign_and_refuse_a_fork_and_a_rollback(tmp_path: Path) -> None:
    w1 = WitnessDir.make(tmp_path, "w1.example/witness")
    w2 = WitnessDir.make(tmp_path, "w2.example/witness")
    # The key is made once, in the state directory, private.
    assert (w1.state_dir / "witness-key.pem").stat().st_mode & 0o077 == 0
    assert WitnessDir.make(tmp_path, "w1.example/witness").vkey == w1.vkey
    async with (
        standalone_server(
            tmp_path / "srv",
            purge_interval=3600,
            max_ttl=3600,
            audit_witnesses=f"{w1.vkey},{w2.vkey}",
        ) as srv,
        aiohttp.ClientSession() as http,
    ):
        async with srv.store() as store:
            auditor, _ = await create_key(store, Role.AUDITOR, "audit", time.time())
        token = tmp_path / "auditor.token"
        token.write_text(auditor)
        log_vkey = (await get_text(http, f"{srv.url}/v1/audit/public-key?format=vkey", "")).strip()
        origin = log_vkey.split("+")[0]
        assert origin.startswith("filestore.audit/") and len(origin) == len("filestore.audit/") + 16
        (tmp_path / "log.vkey").write_text(log_vkey + "\n")

        # ---- the honest log: both witnesses cosign, twice (first, then a proof)
        ids = await delete_files(http, srv, 3)
        run_pass(srv)
        for w in (w1, w2):
            done = w.once(srv, log_vkey, token)
            assert done.returncode == 0, done.stderr
        await delete_files(http, srv, 2)
        run_pass(srv)
        for w in (w1, w2):
            done = w.once(srv, log_vkey, token)
            assert done.returncode == 0, done.stderr
            assert json.loads(w.state())["logs"][origin]["size"] == 5
        note = await get_text(http, f"{srv.url}/v1/audit/checkpoint", auditor)
        assert peek_checkpoint(note).origin == origin and peek_checkpoint(note).size == 5
        witnesses = [parse_witness_key(w.vkey) for w in (w1, w2)]
        assert set(cosignature_lines(note, witnesses)) == {w1.name, w2.name}

        # ---- the verifier: a quorum of two on the export and on a receipt
        export = tmp_path / "export.jsonl"
        export.write_text(await get_text(http, f"{srv.url}/v1/audit/deletions", auditor))
        pub = str(tmp_path / "log.vkey")
        flags = ["--witness", w1.vkey, "--witness", w2.vkey, "--min-witnesses", "2"]
        done = cli("audit", "verify", str(export), "--public-key", pub, *flags)
        assert done.returncode == 0, done.stderr
        assert "cosigned by 2 witness(es)" in done.stdout
        receipt = tmp_path / "receipt.json"
        receipt.write_text(
            await get_text(http, f"{srv.url}/v1/files/{ids[0]}/receipt", srv.client_key)
        )
        done = cli("audit", "verify-receipt", str(receipt), "--public-key", pub, *flags)
        assert done.returncode == 0, done.stderr

        # A witness that never cosigned: the quorum of two is not met.
        w3 = WitnessDir.make(tmp_path, "w3.example/witness")
        short = ["--witness", w1.vkey, "--witness", w3.vkey, "--min-witnesses", "2"]
        done = cli("audit", "verify", str(export), "--public-key", pub, *short)
        assert done.returncode == 1 and "witness quorum not met" in done.stderr, done.stderr
        done = cli("audit", "verify-receipt", str(receipt), "--public-key", pub, *short)
        assert done.returncode == 1 and "witness quorum not met" in done.stderr, done.stderr
        # A cosignature altered in the export: a fault of its own.
        bad = tmp_path / "bad.jsonl"
        bad.write_text(_flip_cosignature(export.read_text(), w2.name))
        done = cli("audit", "verify", str(bad), "--public-key", pub, *flags)
        assert done.returncode == 1, done.stderr
        assert f"cosignature by witness '{w2.name}' does not verify" in done.stderr

        # ---- the fork: records 4..5 rewritten, re-signed at size 5 with the real key
        before = {w.name: w.state() for w in (w1, w2)}
        await forge_from(srv, 4)
        run_pass(srv)
        forked = await get_text(http, f"{srv.url}/v1/audit/checkpoint", auditor)
        assert peek_checkpoint(forked).size == 5 and peek_checkpoint(forked).root != (
            peek_checkpoint(note).root
        )
        for w in (w1, w2):
            done = w.once(srv, log_vkey, token)
            assert done.returncode == 1, done.stderr
            assert "ERROR" in done.stderr and "FORK" in done.stderr
            assert w.state() == before[w.name]
        # The forged log still verifies on its own — only the witnesses catch it.
        export.write_text(await get_text(http, f"{srv.url}/v1/audit/deletions", auditor))
        assert cli("audit", "verify", str(export), "--public-key", pub).returncode == 0
        done = cli("audit", "verify", str(export), "--public-key", pub, *flags)
        assert done.returncode == 1 and "witness quorum not met" in done.stderr

        # ---- a fork that grows: a proof from size 5 that cannot verify
        await delete_files(http, srv, 1)
        run_pass(srv)
        done = w1.once(srv, log_vkey, token)
        assert done.returncode == 1 and "FORK" in done.stderr, done.stderr
        assert w1.state() == before[w1.name]

        # ---- the rollback: the log cut back to size 4 and re-signed
        async with srv.store() as store:
            await db.execute(store, "DELETE FROM audit_log WHERE seq > 4")
            await db.execute(store, "DELETE FROM audit_checkpoints WHERE size > 4")
        run_pass(srv)
        for w in (w1, w2):
            done = w.once(srv, log_vkey, token)
            assert done.returncode == 1, done.stderr
            assert "ERROR" in done.stderr and "ROLLBACK" in done.stderr
            assert w.state() == before[w.name]


def _flip_cosignature(export: str, name: str) -> str:
    lines = export.splitlines(keepends=True)
    for i in reversed(range(len(lines))):
        data = json.loads(lines[i])
        if data["type"] == "checkpoint" and name in data["note"]:
            sig = next(s for s in data["note"].split("\n") if s.startswith(f"\u2014 {name} "))
            blob = bytearray(base64.b64decode(sig.split(" ")[2]))
            blob[-1] ^= 1
            new = f"\u2014 {name} {base64.b64encode(bytes(blob)).decode()}"
            lines[i] = lines[i].replace(
                json.dumps(sig, ensure_ascii=False)[1:-1], json.dumps(new, ensure_ascii=False)[1:-1]
            )
            return "".join(lines)
    raise AssertionError("no cosigned checkpoint")
