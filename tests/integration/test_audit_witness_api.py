"""The gateway's side of witnessing, on both metadata backends: the log's
identity (derived, configured, legacy), the consistency route, and the
cosignature route's checks; exports carry the cosignatures and verify with a
quorum."""

from __future__ import annotations

import hashlib
import secrets
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from filestore import auditlog, ids
from filestore.audit import (
    checkpoint_of,
    entries,
    parse_and_verify,
    peek_checkpoint,
    sign_checkpoint,
    verify_export,
)
from filestore.audit.cosignature import Witness, cosign, cosignature_lines, witness_vkey
from filestore.audit.keys import raw_public_key
from filestore.audit.merkle import verify_consistency
from filestore.errors import ConfigError
from filestore.metadata.base import Role
from tests.support.db import MetadataBackend
from tests.support.gateway import Gateway, running_gateway

W1 = Ed25519PrivateKey.from_private_bytes(hashlib.sha256(b"api witness 1").digest())
W2 = Ed25519PrivateKey.from_private_bytes(hashlib.sha256(b"api witness 2").digest())
WITNESS1 = Witness("w1.example/api", W1.public_key())
WITNESS2 = Witness("w2.example/api", W2.public_key())


@pytest.fixture
async def gw(tmp_path: Path, metadata_backend: MetadataBackend) -> AsyncIterator[Gateway]:
    async with running_gateway(
        tmp_path,
        database_url=metadata_backend.url,
        audit_witnesses=f"{WITNESS1.vkey()},{WITNESS2.vkey()}",
    ) as gateway:
        yield gateway


async def grow(gw: Gateway, count: int) -> tuple[int, str]:
    """``count`` more records, then a checkpoint (as a purge pass signs it)."""
    for _ in range(count):
        await gw.services.metadata.audit.append(
            entries.orphan_deleted(
                file_id=ids.to_text(secrets.token_bytes(16)),
                deleted_at=gw.clock.now(),
                backend="local",
                actor="test",
                software_version="0",
            )
        )
    gw.clock.advance(1)
    svc = gw.services
    return await auditlog.write_checkpoint(
        svc.metadata, svc.signing_key, svc.settings.audit_origin, gw.clock.now()
    )


def cosigned(note: str, *keys: tuple[Ed25519PrivateKey, str], when: int) -> str:
    text = note[: note.index("\n\n") + 1]
    return note + "".join(cosign(text, key, name, when) for key, name in keys)


async def post(gw: Gateway, body: str, role: Role = Role.AUDITOR) -> tuple[int, str]:
    resp = await gw.client.post(
        "/v1/audit/cosignatures", data=body.encode(), headers=await gw.auth("audit", role)
    )
    return resp.status, await resp.text()


# -------------------------------------------------------------- identity
async def test_a_new_log_is_named_after_its_key(gw: Gateway) -> None:
    key = gw.services.signing_key
    expected = (
        "filestore.audit/" + hashlib.sha256(raw_public_key(key.public_key())).hexdigest()[:16]
    )
    assert auditlog.derived_origin(key) == expected
    resp = await gw.client.get("/v1/audit/public-key", params={"format": "vkey"})
    assert (await resp.text()).split("+")[0] == expected
    _size, note = await grow(gw, 2)
    assert peek_checkpoint(note).origin == expected
    # Signed under a key name equal to the origin.
    assert parse_and_verify(note, key.public_key(), expected).size == 2


async def test_a_legacy_log_keeps_its_origin_and_key_name(tmp_path: Path) -> None:
    async with running_gateway(tmp_path) as gw:
        svc = gw.services
        legacy = sign_checkpoint(
            checkpoint_of(auditlog.LEGACY_ORIGIN, [], gw.clock.now()),
            svc.signing_key,
            auditlog.LEGACY_KEY_NAME,
        )
        await svc.metadata.audit.add_checkpoint(0, legacy, gw.clock.now())
        ident = await auditlog.identity(svc.metadata, svc.signing_key, "")
        assert ident == auditlog.Identity(auditlog.LEGACY_ORIGIN, auditlog.LEGACY_KEY_NAME)
        _size, note = await grow(gw, 1)
        assert peek_checkpoint(note).origin == auditlog.LEGACY_ORIGIN
        parse_and_verify(note, svc.signing_key.public_key(), auditlog.LEGACY_KEY_NAME)
        resp = await gw.client.get("/v1/audit/public-key", params={"format": "vkey"})
        assert (await resp.text()).startswith("filestore-audit+")
        # Configuring the same origin is fine; another one is refused.
        same = await auditlog.identity(svc.metadata, svc.signing_key, auditlog.LEGACY_ORIGIN)
        assert same == ident
        with pytest.raises(ConfigError, match="a log's origin cannot change"):
            await auditlog.identity(svc.metadata, svc.signing_key, "filestore.audit/eu-1")


async def test_a_configured_origin_names_a_new_log(tmp_path: Path) -> None:
    async with running_gateway(tmp_path, audit_origin="filestore.audit/eu-1") as gw:
        _size, note = await grow(gw, 1)
        assert peek_checkpoint(note).origin == "filestore.audit/eu-1"
        parse_and_verify(note, gw.services.signing_key.public_key(), "filestore.audit/eu-1")


def test_origin_and_witness_settings_are_checked() -> None:
    from filestore.config import Settings

    with pytest.raises(ConfigError, match="FILESTORE_AUDIT_ORIGIN"):
        Settings.load(env={"FILESTORE_AUDIT_ORIGIN": "filestore.audit/a+b"})
    log_vkey = "filestore-audit+" + "00" * 4 + "+AQ=="
    with pytest.raises(ConfigError, match="FILESTORE_AUDIT_WITNESSES"):
        Settings.load(env={"FILESTORE_AUDIT_WITNESSES": log_vkey})
    twice = f"{WITNESS1.vkey()} {witness_vkey(WITNESS1.name, W2.public_key())}"
    with pytest.raises(ConfigError, match="two witnesses are named"):
        Settings.load(env={"FILESTORE_AUDIT_WITNESSES": twice})
    both = Settings.load(env={"FILESTORE_AUDIT_WITNESSES": f"{WITNESS1.vkey()}, {WITNESS2.vkey()}"})
    assert both.audit_witnesses == (WITNESS1.vkey(), WITNESS2.vkey())


# ------------------------------------------------------------ consistency
async def test_consistency_route_proves_the_log_only_grew(gw: Gateway) -> None:
    _s, old = await grow(gw, 3)
    _s, new = await grow(gw, 4)
    auth = await gw.auth("audit", Role.AUDITOR)
    resp = await gw.client.get(
        "/v1/audit/consistency", params={"from": "3", "to": "7"}, headers=auth
    )
    assert resp.status == 200, await resp.text()
    proof = [bytes.fromhex(h) for h in (await resp.json())["proof"]]
    verify_consistency(3, 7, peek_checkpoint(old).root, peek_checkpoint(new).root, proof)
    for params in (
        {"from": "5", "to": "3"},
        {"from": "1", "to": "8"},
        {"from": "x", "to": "3"},
        {"to": "3"},
    ):
        resp = await gw.client.get("/v1/audit/consistency", params=params, headers=auth)
        assert resp.status == 400, params
    resp = await gw.client.get(
        "/v1/audit/consistency", params={"from": "1", "to": "2"}, headers=await gw.auth()
    )
    assert resp.status == 403


# ----------------------------------------------------------- cosignatures
async def test_cosignatures_are_kept_served_and_exported(gw: Gateway) -> None:
    _size, note = await grow(gw, 3)
    when = int(gw.clock.now())
    status, body = await post(gw, cosigned(note, (W1, WITNESS1.name), when=when))
    assert status == 200, body
    status, body = await post(gw, cosigned(note, (W2, WITNESS2.name), when=when))
    assert status == 200, body
    resp = await gw.client.get("/v1/audit/checkpoint", headers=await gw.auth("audit", Role.AUDITOR))
    served = await resp.text()
    assert cosignature_lines(served, [WITNESS1, WITNESS2]) == {
        WITNESS1.name: when,
        WITNESS2.name: when,
    }
    assert await auditlog.cosigned_note(gw.services.metadata, 3) == served
    # An export ends at that cosigned checkpoint and verifies with a quorum.
    svc = gw.services
    gw.clock.advance(100)
    lines = [
        line
        async for chunk in auditlog.export(svc.metadata, svc.signing_key, "", gw.clock.now())
        for line in chunk.splitlines()
    ]
    report = verify_export(
        lines,
        svc.signing_key.public_key(),
        now=gw.clock.now(),
        witnesses=[WITNESS1, WITNESS2],
        min_witnesses=2,
    )
    assert report.witnessed_by == (WITNESS1.name, WITNESS2.name)


async def test_cosignature_route_refusals(gw: Gateway, tmp_path: Path) -> None:
    _size, note = await grow(gw, 2)
    when = int(gw.clock.now())
    stranger = Ed25519PrivateKey.generate()
    status, body = await post(gw, cosigned(note, (stranger, "w9.example/x"), when=when))
    assert status == 400 and "no cosignature by a configured witness" in body
    good = cosigned(note, (W1, WITNESS1.name), when=when)
    status, body = await post(gw, good.replace(WITNESS1.name + " ", WITNESS1.name + " A", 1))
    assert status == 400
    forged = cosigned(note, (W2, WITNESS1.name), when=when)  # W2's key under W1's name
    assert (await post(gw, forged))[0] == 400
    status, body = await post(gw, cosigned(note, (W1, WITNESS1.name), when=when + 3600))
    assert status == 400 and "dated in the future" in body
    other_log = sign_checkpoint(
        checkpoint_of(peek_checkpoint(note).origin, [b"\x01" * 32] * 2, gw.clock.now()),
        stranger,
        peek_checkpoint(note).origin,
    )
    assert (await post(gw, cosigned(other_log, (W1, WITNESS1.name), when=when)))[0] == 400
    assert (await post(gw, "not a note"))[0] == 400
    assert (await post(gw, good, Role.CLIENT))[0] == 403
    # The log re-signed its checkpoint at the same size since: 409, fetch again.
    gw.clock.advance(60)
    await grow(gw, 0)
    status, body = await post(gw, good)
    assert status == 409 and "re-signed since" in body
    assert await gw.services.metadata.audit.cosignatures(0, 10) == []
    # With no witness configured, cosignatures are not taken at all.
    async with running_gateway(tmp_path / "bare") as bare:
        _s, bare_note = await grow(bare, 1)
        assert (await post(bare, cosigned(bare_note, (W1, WITNESS1.name), when=when)))[0] == 403
