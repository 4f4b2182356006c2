"""The witness's push mode: the tlog-witness HTTP interface over a real
state directory (key made on first start, state written before answering)."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

from aiohttp.test_utils import TestClient, TestServer
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from filestore.audit import checkpoint_of, sign_checkpoint
from filestore.audit.cosignature import cosignature_lines, parse_witness_key
from filestore.audit.keys import verifier_key_string
from filestore.audit.merkle import consistency_proof
from filestore.audit.witness import format_request
from filestore.witnessing import WitnessProcess, log_key, origin_hash, push_app

LOG = Ed25519PrivateKey.from_private_bytes(hashlib.sha256(b"push log").digest())
ORIGIN = "filestore.audit/push-test"
T = 1_800_000_000.0


def leaves(n: int, salt: bytes = b"") -> list[bytes]:
    return [hashlib.sha256(salt + bytes([i])).digest() for i in range(n)]


def note(n: int, salt: bytes = b"") -> str:
    return sign_checkpoint(checkpoint_of(ORIGIN, leaves(n, salt), T), LOG, ORIGIN)


async def test_add_checkpoint_over_http(tmp_path: Path) -> None:
    vkey = verifier_key_string(ORIGIN, LOG.public_key())
    witness = WitnessProcess(tmp_path / "w", "push.example/w", [log_key(vkey, None)])
    state_file = tmp_path / "w" / "state.json"
    async with TestClient(TestServer(push_app(witness, clock=lambda: T + 5))) as client:
        resp = await client.post("/add-checkpoint", data=format_request(0, [], note(4)))
        assert resp.status == 200, await resp.text()
        line = await resp.text()
        me = parse_witness_key(witness.vkey)
        assert cosignature_lines(note(4) + line, [me]) == {me.name: int(T + 5)}
        assert json.loads(state_file.read_text())["logs"][ORIGIN]["size"] == 4

        resp = await client.post("/add-checkpoint", data=format_request(0, [], note(6)))
        assert resp.status == 409
        assert resp.content_type == "text/x.tlog.size" and await resp.text() == "4\n"

        before = state_file.read_bytes()
        forged = note(6, b"fork")
        resp = await client.post(
            "/add-checkpoint",
            data=format_request(4, consistency_proof(4, leaves(6, b"fork")), forged),
        )
        assert resp.status == 422 and "FORK" in await resp.text()
        assert state_file.read_bytes() == before

        resp = await client.post(
            "/add-checkpoint", data=format_request(4, consistency_proof(4, leaves(6)), note(6))
        )
        assert resp.status == 200
        resp = await client.get(f"/{origin_hash(ORIGIN)}/checkpoint")
        assert resp.status == 200 and await resp.text() == note(6)
        assert (await client.get(f"/{'0' * 64}/checkpoint")).status == 404
        assert (await client.post("/add-checkpoint", data=b"garbage")).status == 400
        other = sign_checkpoint(checkpoint_of("x.log/other", [], T), LOG, "x.log/other")
        assert (
            await client.post("/add-checkpoint", data=format_request(0, [], other))
        ).status == 404

    # A restart reads the state back: the same key and the size it last cosigned.
    again = WitnessProcess(tmp_path / "w", "push.example/w", [log_key(vkey, None)])
    assert again.vkey == witness.vkey and again.core.known_size(ORIGIN) == 6
    assert (tmp_path / "w" / "witness-key.pem").stat().st_mode & 0o077 == 0
