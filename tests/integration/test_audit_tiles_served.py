"""The deletion log served as C2SP tlog-tiles, on SQLite and PostgreSQL:
receipts and exports computed from tiles are byte-identical to the
all-leaves computation; the tile routes are strict, auditor-only and within
what checkpoints cover; and an independent tlog-tiles client (tlog-scales)
reads the log through a real gateway and agrees with its checkpoints."""

from __future__ import annotations

import asyncio
import base64
import hashlib
import json
from typing import Any

import pytest
import requests
from tlog_scales.reader import TilesReader
from tlog_scales.tlog import ConsistencyProof, InclusionProof

from filestore import auditlog
from filestore.audit import (
    AuditRecord,
    ExportHeader,
    decode_record,
    entries,
    export_lines,
    load_verifier,
    merkle,
    peek_checkpoint,
    verify_export,
    verify_receipt,
)
from filestore.audit._time import parse_time
from filestore.audit.tiles import TILE_WIDTH, format_index, parse_tile_path, partial_tiles
from filestore.metadata.base import Role
from tests.support.gateway import Gateway

PROBLEM = "application/problem+json"


def _fid(i: int) -> str:
    return base64.urlsafe_b64encode(hashlib.sha256(b"f%d" % i).digest()[:16]).rstrip(b"=").decode()


async def _grow(gateway: Gateway, upto: int, checkpoint_at: tuple[int, ...] = ()) -> None:
    """Append orphan-deletion records (one a second) up to seq ``upto``,
    signing a checkpoint whenever the log reaches a size in ``checkpoint_at``."""
    svc = gateway.services
    head = await svc.metadata.audit.head()
    for seq in range((head.seq if head else 0) + 1, upto + 1):
        gateway.clock.advance(1)
        await svc.metadata.audit.append(
            entries.orphan_deleted(
                file_id=_fid(seq),
                deleted_at=gateway.clock.now(),
                backend="local",
                actor="test",
                software_version="0",
            )
        )
        if seq in checkpoint_at:
            await auditlog.write_checkpoint(
                svc.metadata, svc.signing_key, svc.settings.audit_origin, gateway.clock.now()
            )


async def _service_export(gateway: Gateway, **kw: Any) -> str:
    svc = gateway.services
    parts = [
        chunk
        async for chunk in auditlog.export(
            svc.metadata, svc.signing_key, svc.settings.audit_origin, gateway.clock.now(), **kw
        )
    ]
    return "".join(parts)


def _old_path(text: str, leaves: list[bytes], consistency_from: int | None) -> str:
    """The same export recomputed the way it was before tiles: every leaf."""
    lines = [json.loads(line) for line in text.splitlines()]
    head = lines[0]
    header = ExportHeader(
        first_seq=head["first_seq"],
        exported_at=parse_time(head["exported_at"]),
        since=None if head["since"] is None else parse_time(head["since"]),
        until=None if head["until"] is None else parse_time(head["until"]),
        partial=head["partial"],
    )
    records = [
        AuditRecord.from_json({k: v for k, v in x.items() if k != "type"})
        for x in lines
        if x["type"] == "record"
    ]
    notes = [x["note"] for x in lines if x["type"] == "checkpoint"]
    return "".join(
        export_lines(header, records, notes, leaves=leaves, consistency_from=consistency_from)
    )


async def test_tile_proofs_are_byte_identical_to_all_leaves(gateway: Gateway) -> None:
    cps = (1, 100, 255, 256, 300, 511, 512, 600)
    await _grow(gateway, 600, cps)
    audit = gateway.services.metadata.audit
    leaves = await audit.hashes(600)
    # Receipts: the proof from tiles is the all-leaves proof, in a tlog-proof.
    for seq in (1, 2, 100, 255, 256, 257, 300, 480, 511, 512, 513, 599, 600):
        text = await auditlog.receipt(gateway.services.metadata, _fid(seq))
        assert text is not None
        covering = await audit.checkpoint_covering(seq)
        assert covering is not None
        size = covering[0]
        lines = text.split("\n")
        proof = [base64.b64decode(x) for x in lines[3 : lines.index("")]]
        assert proof == merkle.inclusion_proof(seq - 1, leaves[:size]), seq
    # Exports: slices (frontier, prev_hash), checkpoints beyond the slice
    # (consistency, head proof) and consistency_from, against the old path.
    start = gateway.clock.now() - 600
    cases: list[dict[str, Any]] = [
        {},
        {"consistency_from": 0},
        {"consistency_from": 257},
        {"since": start + 1, "until": start + 2},
        {"since": start + 2, "until": start + 3, "consistency_from": 1},
        {"since": start + 257, "until": start + 300, "consistency_from": 99},
        {"since": start + 300},
        {"since": start + 513, "until": start + 599, "consistency_from": 600},
        {"until": start + 400},
    ]
    for kw in cases:
        new = await _service_export(gateway, **kw)
        old = _old_path(new, await audit.hashes(600), kw.get("consistency_from"))
        assert new == old, kw
        # And it verifies.
        key = gateway.services.signing_key.public_key()
        verify_export(new.splitlines(), key, now=gateway.clock.now())


async def _get(gateway: Gateway, path: str, role: Role = Role.AUDITOR) -> Any:
    return await gateway.client.get(
        f"/v1/audit/tile/{path}", headers=await gateway.auth("audit", role)
    )


async def test_tile_routes(gateway: Gateway) -> None:
    await _grow(gateway, 300, (10, 300))
    await _grow(gateway, 310)  # records past the newest checkpoint
    audit = gateway.services.metadata.audit
    leaves = await audit.hashes(310)
    # Full level-0 tile: leaf hashes, immutable.
    full = await _get(gateway, "0/000")
    assert full.status == 200 and full.content_type == "application/octet-stream"
    assert "immutable" in full.headers["Cache-Control"]
    assert await full.read() == b"".join(merkle.leaf_hash(h) for h in leaves[:256])
    # Partial tiles only at widths a checkpoint needs (10: 0/000.p/10;
    # 300: 0/001.p/44 and 1/000.p/1), with a short cache.
    for path, want in (
        ("0/000.p/10", b"".join(merkle.leaf_hash(h) for h in leaves[:10])),
        ("0/001.p/44", b"".join(merkle.leaf_hash(h) for h in leaves[256:300])),
        ("1/000.p/1", merkle.root(leaves[:256])),
    ):
        resp = await _get(gateway, path)
        assert resp.status == 200, path
        assert "immutable" not in resp.headers["Cache-Control"]
        assert await resp.read() == want
    for missing in ("0/000.p/11", "0/001.p/54", "0/001", "1/000", "2/000.p/1", "0/002.p/1"):
        resp = await _get(gateway, missing)
        assert resp.status == 404 and resp.content_type == PROBLEM, missing
    # Entry bundles: each entry the record's hash, hashing to the level-0 tile.
    resp = await _get(gateway, "entries/001.p/44")
    body = await resp.read()
    assert resp.status == 200
    assert body == b"".join(b"\x00\x20" + h for h in leaves[256:300])
    # Record bundles: the stored canonical JSON of each record.
    resp = await _get(gateway, "records/000.p/10")
    body = await resp.read()
    texts = []
    while body:
        n = int.from_bytes(body[:2], "big")
        texts.append(body[2 : 2 + n].decode())
        body = body[2 + n :]
    assert [decode_record(t).seq for t in texts] == list(range(1, 11))
    assert [bytes.fromhex(decode_record(t).hash) for t in texts] == leaves[:10]
    assert await audit.record_texts(0, 10) == texts
    # Strict paths: one spelling per tile, else 404 (as a malformed file id).
    for bad in (
        "0/0",
        "0/00",
        "00/000",
        "0/x000/000",
        "0/000.p/0",
        "0/000.p/256",
        "0/000.p/010",
        "64/000",
        "0/000/",
        "leaves/000",
        "entries/x001",
        "1/x1/000",
    ):
        resp = await _get(gateway, bad)
        assert resp.status == 404 and resp.content_type == PROBLEM, bad
    assert (await _get(gateway, "0/000?x=1")).status == 400
    # Auditors only.
    assert (await _get(gateway, "0/000", Role.CLIENT)).status == 403
    assert (await _get(gateway, "records/000", Role.OPERATOR)).status == 403
    assert (await gateway.client.get("/v1/audit/tile/0/000")).status == 401


class _AuditorBackend:
    """tlog-scales's TilesBackend over HTTP with the auditor's key: its own
    HttpBackend sends no Authorization header."""

    def __init__(self, base: str, key: str) -> None:
        self.base = base.rstrip("/")
        self.session = requests.Session()
        self.session.headers["Authorization"] = f"Bearer {key}"
        self.fetched: list[str] = []

    def get(self, *path: str) -> bytes | None:
        self.fetched.append("/".join(path))
        resp = self.session.get(self.base + "/" + "/".join(path), timeout=30)
        return resp.content if resp.status_code == 200 else None


async def test_an_independent_tlog_tiles_client_reads_the_log(gateway: Gateway) -> None:
    sizes = (5, 256, 700)
    await _grow(gateway, 700, sizes)
    audit = gateway.services.metadata.audit
    leaves = await audit.hashes(700)
    key = await gateway.key("audit", Role.AUDITOR)
    backend = _AuditorBackend(str(gateway.client.make_url("/v1/audit")), key)
    public, _ = load_verifier(await (await gateway.client.get("/v1/audit/public-key")).text())

    def read() -> None:
        # Our checkpoints carry chain-head and time lines, which tlog-scales's
        # Checkpoint.from_text does not take: parse the note ourselves.
        note = backend.get("checkpoint")
        assert note is not None
        newest = peek_checkpoint(note.decode())
        assert newest.size == 700
        reader = TilesReader(backend)
        reader.set_size(newest.size)
        assert reader.calculate_root_hash() == newest.root
        for index in (0, 1, 255, 256, 511, 699):
            entry = reader.get_entry(index)
            assert entry == leaves[index]
            proof = reader.get_inclusion_proof(index, newest.size)
            assert isinstance(proof, InclusionProof)
            proof.check(merkle.leaf_hash(entry), newest.root)
            assert proof.node_hashes == merkle.inclusion_proof(index, leaves)
        for old in (5, 256):
            consistency = reader.get_consistency_proof(old, newest.size)
            assert isinstance(consistency, ConsistencyProof)
            consistency.check(merkle.root(leaves[:old]), newest.root)
        # The only partial tiles it asked for are those the checkpoint of 700
        # requires (tlog-tiles: never arbitrary partial tiles).
        asked = {
            parse_tile_path(p.removeprefix("tile/"), ("entries",)).tile
            for p in backend.fetched
            if ".p/" in p
        }
        assert asked and asked <= set(partial_tiles(700))

    await asyncio.to_thread(read)
    # The served note verifies with the log's key, and the receipt the
    # tenant gets agrees with the tiles.
    receipt = await auditlog.receipt(gateway.services.metadata, _fid(300))
    assert receipt is not None
    assert verify_receipt(receipt, public, file_id=_fid(300)).seq == 300


@pytest.mark.parametrize("index", [0, 999, 1000, 1_234_067])
def test_paths_the_client_builds_are_ours(index: int) -> None:
    from tlog_scales.tiles import tile_path

    assert "/".join(tile_path(0, index)[2:]) == format_index(index)
    assert "/".join(tile_path(3, index, 7)[2:]) == format_index(index, 7)
    assert TILE_WIDTH == 256
