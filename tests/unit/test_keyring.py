"""The keyring (KEKs wrapping DEKs) and the other private key files."""

from __future__ import annotations

import base64
import json
import os
import stat
from pathlib import Path

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from filestore.crypto import Keyring, load_or_create_signing_key, public_key_path, public_key_pem
from filestore.crypto._files import check_private, write_private_file
from filestore.crypto.keyring import Tombstone
from filestore.crypto.wrapping import DekBinding
from filestore.errors import ConfigError, IntegrityError, KeyDestroyed, KeyNotFound

NOW = 1_800_000_000.0
FILE = DekBinding(bytes(range(16)), "acme")
OTHER_FILE = DekBinding(bytes(range(1, 17)), "acme")


def mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def key_texts(path: Path) -> list[str]:
    """Every KEK in the file, as base64, hex and raw text (for leak checks)."""
    doc = json.loads(path.read_text())
    out: list[str] = []
    for item in doc["keys"]:
        raw = base64.b64decode(item["key"])
        out += [item["key"], raw.hex(), repr(raw)]
    return out


@pytest.fixture
def path(tmp_path: Path) -> Path:
    return tmp_path / "deep" / "er" / "keyring.json"


@pytest.fixture
def ring(path: Path) -> Keyring:
    return Keyring.load_or_create(path, NOW)


# ------------------------------------------------------------------ creation
def test_create_writes_private_file_in_private_dirs(ring: Keyring, path: Path) -> None:
    assert mode(path) == 0o600
    assert mode(path.parent) == 0o700
    assert mode(path.parent.parent) == 0o700
    doc = json.loads(path.read_text())
    assert doc["format"] == "filestore-keyring/1"
    assert doc["active"] == 1
    assert [(k["id"], k["created_at"]) for k in doc["keys"]] == [(1, NOW)]
    assert len(base64.b64decode(doc["keys"][0]["key"])) == 32
    assert ring.active_id == 1
    assert ring.entries() == [(1, NOW)]
    assert [p.name for p in path.parent.iterdir()] == ["keyring.json"]  # no temp files


def test_load_round_trip(ring: Keyring, path: Path) -> None:
    kek_id, wrapped = ring.wrap(b"k" * 32, FILE)
    again = Keyring.load_or_create(path, NOW + 100)
    assert again.active_id == 1
    assert again.entries() == ring.entries()
    assert again.unwrap(kek_id, FILE, wrapped) == b"k" * 32


# ------------------------------------------------------------------- wrapping
def test_wrap_unwrap(ring: Keyring) -> None:
    dek = os.urandom(32)
    kek_id, wrapped = ring.wrap(dek, FILE)
    assert kek_id == 1
    assert len(wrapped) == 1 + 12 + 32 + 16
    assert dek not in wrapped
    assert ring.unwrap(kek_id, FILE, wrapped) == dek
    assert ring.wrap(dek, FILE)[1] != wrapped  # fresh nonce each time


def test_wrap_is_bound_to_file_and_kek(ring: Keyring) -> None:
    dek = os.urandom(32)
    kek_id, wrapped = ring.wrap(dek, FILE)
    with pytest.raises(IntegrityError):
        ring.unwrap(kek_id, OTHER_FILE, wrapped)
    new_id = ring.rotate(NOW + 1)
    with pytest.raises(IntegrityError):
        ring.unwrap(new_id, FILE, wrapped)  # relabelled to another KEK
    tampered = bytearray(wrapped)
    tampered[-1] ^= 1
    with pytest.raises(IntegrityError):
        ring.unwrap(kek_id, FILE, bytes(tampered))
    with pytest.raises(IntegrityError):
        ring.unwrap(kek_id, FILE, wrapped[:-1])
    with pytest.raises(KeyNotFound):
        ring.unwrap(99, FILE, wrapped)
    with pytest.raises(ValueError):
        ring.wrap(dek[:16], FILE)


# ----------------------------------------------------------- rotate, destroy
def test_rotate_makes_new_active_and_old_still_unwraps(ring: Keyring, path: Path) -> None:
    dek = os.urandom(32)
    old_id, wrapped = ring.wrap(dek, FILE)
    assert ring.rotate(NOW + 3600) == 2
    assert ring.active_id == 2
    assert ring.entries() == [(1, NOW), (2, NOW + 3600)]
    assert ring.wrap(dek, FILE)[0] == 2
    assert ring.unwrap(old_id, FILE, wrapped) == dek
    reloaded = Keyring.load_or_create(path, NOW)
    assert reloaded.active_id == 2
    assert reloaded.unwrap(old_id, FILE, wrapped) == dek
    assert mode(path) == 0o600


def test_destroy_leaves_a_tombstone_and_makes_unwrap_raise_key_destroyed(
    ring: Keyring, path: Path
) -> None:
    dek = os.urandom(32)
    old_id, wrapped = ring.wrap(dek, FILE)
    old_key = key_texts(path)[0]
    ring.rotate(NOW + 1)
    stone = ring.destroy(old_id, NOW + 5)
    assert stone == Tombstone(old_id, NOW, NOW + 5)
    with pytest.raises(KeyDestroyed):
        ring.unwrap(old_id, FILE, wrapped)
    assert old_key not in path.read_text()
    reloaded = Keyring.load_or_create(path, NOW)
    assert reloaded.entries() == [(2, NOW + 1)]
    # The tombstone is in the same file, so it survives a crash.
    assert reloaded.tombstones() == [stone]
    with pytest.raises(KeyDestroyed):
        reloaded.unwrap(old_id, FILE, wrapped)
    with pytest.raises(KeyNotFound):
        ring.destroy(old_id, NOW)
    reloaded.forget(old_id)
    assert Keyring.load_or_create(path, NOW).tombstones() == []
    assert '"destroyed"' not in path.read_text()
    # Ids below the oldest held stay destroyed without a tombstone; a foreign
    # id above them is not "destroyed".
    with pytest.raises(KeyDestroyed):
        reloaded.unwrap(old_id, FILE, wrapped)
    with pytest.raises(KeyNotFound) as foreign:
        reloaded.unwrap(99, FILE, wrapped)
    assert not isinstance(foreign.value, KeyDestroyed)
    assert ring.rotate(NOW + 2) == 3  # ids are never reused while the max lives


def test_the_tenant_is_bound_into_the_wrap(ring: Keyring) -> None:
    dek = os.urandom(32)
    kek_id, wrapped = ring.wrap(dek, FILE)
    assert len(wrapped) == 61 and wrapped[0] == 2
    with pytest.raises(IntegrityError):
        ring.unwrap(kek_id, DekBinding(FILE.file_id, "acme2"), wrapped)
    with pytest.raises(IntegrityError):  # a stripped version byte is no v1 wrap
        ring.unwrap(kek_id, FILE, wrapped[1:])
    assert ring.rewrap(kek_id, FILE, wrapped) is None


def test_a_legacy_wrap_opens_and_is_resealed_with_its_tenant(ring: Keyring, path: Path) -> None:
    dek = os.urandom(32)
    kek = base64.b64decode(json.loads(path.read_text())["keys"][0]["key"])
    nonce = os.urandom(12)
    aad = b"filestore/v1/dek-wrap\x00" + (1).to_bytes(4, "big") + FILE.file_id
    legacy = nonce + AESGCM(kek).encrypt(nonce, dek, aad)
    # Before re-sealing it opens for any tenant: the old layout bound none.
    assert ring.unwrap(1, FILE, legacy) == dek
    assert ring.unwrap(1, DekBinding(FILE.file_id, "other"), legacy) == dek
    fresh = ring.rewrap(1, FILE, legacy)
    assert fresh is not None and len(fresh) == 61
    assert ring.unwrap(1, FILE, fresh) == dek
    with pytest.raises(IntegrityError):
        ring.unwrap(1, DekBinding(FILE.file_id, "other"), fresh)


def test_destroying_the_active_kek_is_refused(ring: Keyring) -> None:
    with pytest.raises(ValueError):
        ring.destroy(ring.active_id, NOW)


# ------------------------------------------------------------- bad key files
@pytest.mark.parametrize("bad_mode", [0o640, 0o604, 0o620, 0o644])
def test_group_or_world_accessible_file_is_refused(
    ring: Keyring, path: Path, bad_mode: int
) -> None:
    secrets = key_texts(path)
    path.chmod(bad_mode)
    with pytest.raises(ConfigError) as info:
        Keyring.load_or_create(path, NOW)
    message = str(info.value)
    assert str(path) in message
    assert not any(s in message for s in secrets)


@pytest.mark.parametrize(
    "content",
    [
        b"not json {",
        b"[]",
        json.dumps({"format": "other", "active": 1, "keys": []}).encode(),
        json.dumps({"format": "filestore-keyring/1", "active": 1, "keys": []}).encode(),
        json.dumps(
            {
                "format": "filestore-keyring/1",
                "active": 2,
                "keys": [{"id": 1, "created_at": 0, "key": base64.b64encode(b"s" * 32).decode()}],
            }
        ).encode(),
        json.dumps(
            {
                "format": "filestore-keyring/1",
                "active": 1,
                "keys": [{"id": 1, "created_at": 0, "key": base64.b64encode(b"s" * 31).decode()}],
            }
        ).encode(),
        json.dumps(
            {
                "format": "filestore-keyring/1",
                "active": 1,
                "keys": [{"id": 1, "created_at": 0, "key": "c2VjcmV0c2VjcmV0!!"}],
            }
        ).encode(),
    ],
)
def test_malformed_file_is_refused_without_quoting_it(tmp_path: Path, content: bytes) -> None:
    path = tmp_path / "keyring.json"
    write_private_file(path, content)
    with pytest.raises(ConfigError) as info:
        Keyring.load_or_create(path, NOW)
    message = str(info.value)
    assert str(path) in message
    for secret in ("c2VjcmV0", "sssss", base64.b64encode(b"s" * 31).decode()):
        assert secret not in message
    assert info.value.__cause__ is None
    assert info.value.__context__ is None


def test_secrets_absent_from_repr_and_errors(ring: Keyring, path: Path) -> None:
    ring.rotate(NOW + 1)
    secrets = key_texts(path)
    texts = [repr(ring), str(ring)]
    for action in (
        lambda: ring.unwrap(1, FILE, b"x" * 60),
        lambda: ring.unwrap(42, FILE, b"x" * 60),
        lambda: ring.destroy(ring.active_id, NOW),
    ):
        with pytest.raises(Exception) as info:
            action()
        texts.append(str(info.value))
        texts.append(repr(info.value))
    for text in texts:
        assert not any(s in text for s in secrets), text
    assert "ids=[1, 2]" in repr(ring)


# ---------------------------------------------------------- private files
def test_write_private_file_is_atomic_and_exclusive(tmp_path: Path) -> None:
    path = tmp_path / "f"
    write_private_file(path, b"one")
    write_private_file(path, b"two")
    assert path.read_bytes() == b"two"
    assert mode(path) == 0o600
    with pytest.raises(FileExistsError):
        write_private_file(path, b"three", replace=False)
    assert path.read_bytes() == b"two"
    write_private_file(tmp_path / "pub", b"p", 0o644)
    assert mode(tmp_path / "pub") == 0o644
    assert sorted(p.name for p in tmp_path.iterdir()) == ["f", "pub"]
    check_private(path)
    with pytest.raises(ConfigError):
        check_private(tmp_path / "pub")


def test_signing_key_created_loaded_and_published(tmp_path: Path) -> None:
    path = tmp_path / "keys" / "audit-signing.pem"
    key = load_or_create_signing_key(path)
    pub = public_key_path(path)
    assert pub.name == "audit-signing.pub.pem"
    assert mode(path) == 0o600
    assert mode(pub) == 0o644
    assert path.read_bytes().startswith(b"-----BEGIN PRIVATE KEY-----")
    assert pub.read_bytes() == public_key_pem(key)
    loaded_pub = serialization.load_pem_public_key(pub.read_bytes())
    assert isinstance(loaded_pub, Ed25519PublicKey)
    loaded_pub.verify(key.sign(b"checkpoint"), b"checkpoint")

    pub.unlink()
    again = load_or_create_signing_key(path)
    assert public_key_pem(again) == public_key_pem(key)
    assert pub.read_bytes() == public_key_pem(key)  # republished


def test_signing_key_file_checks(tmp_path: Path) -> None:
    path = tmp_path / "signing.pem"
    load_or_create_signing_key(path)
    path.chmod(0o644)
    with pytest.raises(ConfigError, match=r"signing\.pem"):
        load_or_create_signing_key(path)
    write_private_file(path, b"-----BEGIN PRIVATE KEY-----\nbroken\n-----END PRIVATE KEY-----\n")
    with pytest.raises(ConfigError) as info:
        load_or_create_signing_key(path)
    assert "broken" not in str(info.value)
    assert info.value.__context__ is None


def test_concurrent_creation_keeps_the_first_keyring(
    ring: Keyring, path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Another process created the file between our failed read and our write:
    # we must adopt its keys, not overwrite them with ours.
    from filestore.crypto._files import read_private_file as real_read

    calls: list[Path] = []

    def read_late(p: Path) -> bytes:
        calls.append(p)
        if len(calls) == 1:
            raise FileNotFoundError(p)
        return real_read(p)

    monkeypatch.setattr("filestore.crypto.keyring.read_private_file", read_late)
    late = Keyring.load_or_create(path, NOW + 5)
    kek_id, wrapped = late.wrap(b"d" * 32, FILE)
    assert ring.unwrap(kek_id, FILE, wrapped) == b"d" * 32
    assert late.entries() == [(1, NOW)]


def test_reload_sees_another_processs_rotation(ring: Keyring, path: Path) -> None:
    other = Keyring.load_or_create(path, NOW)
    new_id = other.rotate(NOW + 60)
    kek_id, wrapped = other.wrap(b"e" * 32, FILE)
    with pytest.raises(KeyNotFound):
        ring.unwrap(kek_id, FILE, wrapped)
    ring.reload()
    assert ring.active_id == new_id
    assert ring.unwrap(kek_id, FILE, wrapped) == b"e" * 32


def test_two_processes_sharing_a_keyring_never_lose_or_revive_keys(tmp_path: Path) -> None:
    """Each change is read-modify-write of the file under a lock, so a copy
    in another process's memory cannot overwrite it."""
    path = tmp_path / "keyring.json"
    a = Keyring.load_or_create(path, 1000.0)
    b = Keyring.load_or_create(path, 1000.0)
    second = a.rotate(5000.0, 3600.0)
    kek_id, wrapped = a.wrap(b"d" * 32, FILE)
    assert kek_id == second
    # b's copy is stale; its own rotation sees a's and adopts it.
    assert b.rotate(5001.0, 3600.0) == second
    assert b.unwrap(kek_id, FILE, wrapped) == b"d" * 32
    b.destroy(1, NOW)
    # a, still holding KEK 1 in memory, rotates later: KEK 1 stays gone.
    third = a.rotate(9000.0, 3600.0)
    assert third == second + 1
    fresh = Keyring.load_or_create(path, 0.0)
    assert [kid for kid, _ in fresh.entries()] == [second, third]
    with pytest.raises(KeyNotFound):
        a.destroy(1, NOW)


def test_the_schema_knows_the_legacy_wrap_size() -> None:
    """The partial index that finds legacy wraps names their size as SQL."""
    from filestore.crypto import wrapping
    from filestore.metadata.schema import LEGACY_WRAP_SIZE

    assert LEGACY_WRAP_SIZE == wrapping.LEGACY_SIZE == 60


def test_past_its_deadline_a_kek_is_refused_before_it_is_destroyed(ring: Keyring) -> None:
    from filestore.clock import ManualClock

    clock = ManualClock(NOW)
    ring.enforce_deadlines(clock, 100.0)
    dek = os.urandom(32)
    old_id, wrapped = ring.wrap(dek, FILE)
    ring.rotate(NOW + 10)  # KEK 1 retires at NOW + 10: its deadline is NOW + 110
    clock.set(NOW + 109.9)
    assert ring.unwrap(old_id, FILE, wrapped) == dek
    clock.set(NOW + 110)
    with pytest.raises(KeyDestroyed, match="deadline"):
        ring.unwrap(old_id, FILE, wrapped)
    assert old_id in dict(ring.entries())  # still held: the key step destroys it
    new_id, fresh = ring.wrap(dek, FILE)
    clock.set(NOW + 10_000)
    assert ring.unwrap(new_id, FILE, fresh) == dek  # the active KEK has no deadline
