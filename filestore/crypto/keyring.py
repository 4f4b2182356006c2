"""The keyring: key-encryption keys (KEKs) that wrap every file's DEK.

A KEK is 32 random bytes with a uint32 id. New DEKs are wrapped under the
active KEK; the wrapped DEK and the KEK id go to the metadata database. Rotating
adds a KEK and makes it active; destroying one removes it from the file for
good, which makes every DEK wrapped under it — including stale copies in
database WAL frames, dead tuples, replicas and backups — undecryptable.

The keyring file is JSON, mode 0600, rewritten atomically on each change::

    {"format": "filestore-keyring/1", "active": 2,
     "keys": [{"id": 1, "created_at": 1800000000.0, "key": "<base64>"}, …],
     "destroyed": [{"id": 0, "created_at": …, "destroyed_at": …}]}

``destroyed`` holds tombstones (:class:`Tombstone`) of KEKs destroyed but not
yet audited; it is absent when there are none.

:meth:`Keyring.load_or_create`, :meth:`Keyring.rotate` and
:meth:`Keyring.destroy` do blocking file I/O (with fsync): run them in a
thread (``asyncio.to_thread``). :meth:`Keyring.wrap` and :meth:`Keyring.unwrap`
touch no files and are safe on the event loop; all methods are thread-safe.

Each process holds the keyring in memory. Several processes may share one
file: every change is a read-modify-write of the file under a file lock, so
any of them may rotate and destroy, and the others see the change on
:meth:`Keyring.reload` (called, for instance, when an unwrap raises
KeyNotFound). The keyring cannot be shared by machines that share no disk;
that is what the ratchet (:mod:`filestore.crypto.ratchet`) is for, and
:meth:`Keyring.commitment` lets the database notice two keyrings.

Key bytes never appear in a repr or an exception message.
"""

from __future__ import annotations

import base64
import contextlib
import fcntl
import json
import os
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final

from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives import hmac as crypto_hmac
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from filestore.clock import Clock
from filestore.crypto import wrapping
from filestore.crypto._files import b64_or_none as _b64
from filestore.crypto._files import ensure_private_dir, read_private_file, write_private_file
from filestore.crypto.wrapping import DekBinding
from filestore.errors import ConfigError, KeyDestroyed, KeyNotFound

__all__ = ["Keyring", "Tombstone"]

FORMAT: Final = "filestore-keyring/1"
KEK_SIZE: Final = 32
MAX_KEK_ID: Final = 0xFFFFFFFF
COMMITMENT_LABEL: Final = b"filestore/v1/keyring-commitment"


@dataclass(frozen=True)
class _Kek:
    created_at: float
    key: bytes

    def __repr__(self) -> str:
        return f"_Kek(created_at={self.created_at})"


@dataclass(frozen=True)
class Tombstone:
    """A destroyed KEK whose audit record is not yet known to be written.

    Kept in the keyring file, written in the same atomic rewrite that drops
    the key, so a crash (or a database outage) between the destruction and
    its record cannot lose the record: the next key step appends it and
    :meth:`Keyring.forget` removes the tombstone."""

    kek_id: int
    created_at: float
    destroyed_at: float


_State = tuple[dict[int, _Kek], int, dict[int, Tombstone]]


class Keyring:
    """The set of KEKs held in one keyring file; see the module docstring."""

    def __init__(
        self,
        path: Path,
        keys: dict[int, _Kek],
        active: int,
        tombstones: dict[int, Tombstone] | None = None,
    ) -> None:
        """Use :meth:`load_or_create`; this constructor does not touch disk."""
        if active not in keys:
            raise ValueError("the active KEK must be in the keyring")
        self._path = path
        # One immutable snapshot, swapped whole: readers never lock (wrap and
        # unwrap stay cheap on the event loop, even while a writer fsyncs),
        # and writers are serialised by _write_lock.
        self._state: _State = (dict(keys), active, dict(tombstones or {}))
        self._write_lock = threading.Lock()
        self._deadlines: tuple[Clock, float] | None = None

    def __repr__(self) -> str:
        keys, active, _ = self._state
        return f"Keyring(path={str(self._path)!r}, active={active}, ids={sorted(keys)})"

    # ------------------------------------------------------------------ files
    @classmethod
    def load_or_create(cls, path: Path, now: float) -> Keyring:
        """Load the keyring at ``path``, or create it with KEK 1 if missing.

        Missing directories are created with mode 0700. ConfigError (naming
        the path, never a key) if the file is accessible by group or others
        or is malformed. Blocking.
        """
        try:
            raw = read_private_file(path)
        except FileNotFoundError:
            ensure_private_dir(path.parent)
            ring = cls(path, {1: _Kek(float(now), os.urandom(KEK_SIZE))}, 1)
            try:
                write_private_file(path, cls._encode(ring._state), replace=False)
            except FileExistsError:
                # Another process created it first: use theirs.
                return cls._parse(path, read_private_file(path))
            return ring
        return cls._parse(path, raw)

    def reload(self) -> None:
        """Re-read the file, to see KEKs another process added or destroyed.
        Blocking; ConfigError as for :meth:`load_or_create`."""
        with self._write_lock:
            self._state = self._parse(self._path, read_private_file(self._path))._state

    @classmethod
    def _parse(cls, path: Path, raw: bytes) -> Keyring:
        # Errors are raised outside any ``except`` block so that no exception
        # holding the file's text (JSONDecodeError.doc) is chained to them.
        keys, active, tombstones, problem = _decode(raw)
        if problem is not None:
            raise ConfigError(f"keyring file {path} is malformed: {problem}")
        return cls(path, keys, active, tombstones)

    @staticmethod
    def _encode(state: _State) -> bytes:
        keys, active, tombstones = state
        doc: dict[str, Any] = {
            "format": FORMAT,
            "active": active,
            "keys": [
                {
                    "id": kid,
                    "created_at": kek.created_at,
                    "key": base64.b64encode(kek.key).decode("ascii"),
                }
                for kid, kek in sorted(keys.items())
            ],
        }
        if tombstones:
            doc["destroyed"] = [
                {"id": t.kek_id, "created_at": t.created_at, "destroyed_at": t.destroyed_at}
                for _, t in sorted(tombstones.items())
            ]
        return json.dumps(doc, indent=2).encode("ascii") + b"\n"

    # ----------------------------------------------------------------- access
    @property
    def active_id(self) -> int:
        """Id of the KEK new DEKs are wrapped under."""
        return self._state[1]

    def entries(self) -> list[tuple[int, float]]:
        """``(id, created_at)`` of every KEK, by id."""
        return [(kid, kek.created_at) for kid, kek in sorted(self._state[0].items())]

    def enforce_deadlines(self, clock: Clock, destroy_after: float) -> None:
        """Refuse (KeyDestroyed) to unwrap under a KEK once ``destroy_after``
        seconds have passed since its retirement, even before the scheduler
        gets to destroy it: nothing stays readable under a KEK for the up to
        one interval between its deadline and the next key step."""
        self._deadlines = (clock, destroy_after)

    def _past_deadline(self, kek_id: int) -> bool:
        if self._deadlines is None:
            return False
        clock, destroy_after = self._deadlines
        keys = self._state[0]
        later = [kek.created_at for kid, kek in keys.items() if kid > kek_id]
        # Retired when the next KEK was created; the active one never is.
        return bool(later) and clock.now() >= min(later) + destroy_after

    def tombstones(self) -> list[Tombstone]:
        """KEKs destroyed whose audit record is not yet known to exist, by id."""
        return [t for _, t in sorted(self._state[2].items())]

    def _kek(self, kek_id: int) -> _Kek:
        keys = self._state[0]
        kek = keys.get(kek_id)
        if kek is not None:
            if self._past_deadline(kek_id):
                raise KeyDestroyed(
                    f"key-encryption key {kek_id} is past its destruction deadline"
                )
            return kek
        # Ids only grow and KEKs are destroyed oldest first: one below the
        # oldest held was destroyed; any other is foreign (another keyring).
        if kek_id < min(keys) or kek_id in self._state[2]:
            raise KeyDestroyed(f"key-encryption key {kek_id} has been destroyed")
        raise KeyNotFound(f"key-encryption key {kek_id} is not in the keyring")

    def commitment(self, kek_id: int) -> bytes:
        """``HMAC-SHA256(KEK, label)``: safe to store in the shared database
        (it reveals nothing of the key) and equal only for the same KEK, so
        an instance with another keyring under the same id is noticed.
        KeyNotFound if the KEK is not held."""
        mac = crypto_hmac.HMAC(self._kek(kek_id).key, hashes.SHA256())
        mac.update(COMMITMENT_LABEL)
        return mac.finalize()

    def wrap(self, dek: bytes, binding: DekBinding) -> tuple[int, bytes]:
        """Wrap ``dek`` under the active KEK: ``(kek_id, wrapped)`` in the
        layout of :mod:`filestore.crypto.wrapping`."""
        keys, kek_id, _ = self._state
        return kek_id, wrapping.seal_dek(AESGCM(keys[kek_id].key), kek_id, binding, dek)

    def unwrap(self, kek_id: int, binding: DekBinding, wrapped: bytes) -> bytes:
        """The DEK bound to ``binding``. KeyDestroyed if KEK ``kek_id`` was
        destroyed, KeyNotFound if it is foreign; IntegrityError if the wrapped
        key was altered or belongs to another file, tenant or KEK."""
        return wrapping.open_dek(AESGCM(self._kek(kek_id).key), kek_id, binding, wrapped)

    def rewrap(self, kek_id: int, binding: DekBinding, wrapped: bytes) -> bytes | None:
        """A legacy (pre-tenant) wrap re-sealed under the same KEK, or None if
        it is current; errors as for :meth:`unwrap`."""
        return wrapping.rewrap(AESGCM(self._kek(kek_id).key), kek_id, binding, wrapped)

    # --------------------------------------------------------------- changes
    @contextlib.contextmanager
    def _exclusive(self) -> Iterator[_State]:
        """Hold this process's lock and the file lock, with the keys as the
        file has them now: several processes (gateways, a cron purge) may
        share one keyring, and each change is read-modify-write of the file,
        never of a stale copy in memory."""
        with self._write_lock:
            lock_path = self._path.with_name(self._path.name + ".lock")
            fd = os.open(lock_path, os.O_CREAT | os.O_RDWR | os.O_CLOEXEC, 0o600)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX)
                self._state = self._parse(self._path, read_private_file(self._path))._state
                yield self._state
            finally:
                os.close(fd)  # releases the flock

    def _commit(self, state: _State) -> None:
        write_private_file(self._path, self._encode(state))
        self._state = state

    def rotate(self, now: float, min_age: float = 0.0) -> int:
        """Add a KEK with id ``max + 1``, make it active, persist; return its
        id. If another process already rotated (the active KEK in the file is
        younger than ``min_age``), adopt that one instead. Blocking."""
        with self._exclusive() as (keys, active, tombstones):
            if now - keys[active].created_at < min_age:
                return active
            new_id = max(keys) + 1
            if new_id > MAX_KEK_ID:
                raise ConfigError(f"keyring file {self._path} has run out of KEK ids")
            fresh = _Kek(float(now), os.urandom(KEK_SIZE))
            self._commit(({**keys, new_id: fresh}, new_id, tombstones))
            return new_id

    def destroy(self, kek_id: int, now: float) -> Tombstone:
        """Remove KEK ``kek_id`` from the keyring and the file, leaving its
        tombstone in the same rewrite; return the tombstone. Blocking.

        ValueError for the active KEK; KeyNotFound if it is already gone (a
        caller racing another process may treat that as done: the other one
        left the tombstone).
        """
        with self._exclusive() as (keys, active, tombstones):
            if kek_id == active:
                raise ValueError("the active key-encryption key cannot be destroyed")
            if kek_id not in keys:
                raise KeyNotFound(f"key-encryption key {kek_id} is not in the keyring")
            stone = Tombstone(kek_id, keys[kek_id].created_at, float(now))
            remaining = {kid: kek for kid, kek in keys.items() if kid != kek_id}
            self._commit((remaining, active, {**tombstones, kek_id: stone}))
            return stone

    def forget(self, kek_id: int) -> None:
        """Drop the tombstone of ``kek_id`` once its audit record is written
        (no-op if there is none). Blocking."""
        with self._exclusive() as (keys, active, tombstones):
            if kek_id in tombstones:
                rest = {kid: t for kid, t in tombstones.items() if kid != kek_id}
                self._commit((keys, active, rest))


def _number(value: object) -> float | None:
    if not isinstance(value, int | float) or isinstance(value, bool):
        return None
    return float(value)


def _decode(raw: bytes) -> tuple[dict[int, _Kek], int, dict[int, Tombstone], str | None]:
    """Parse a keyring file: ``(keys, active, tombstones, None)`` or
    ``({}, 0, {}, problem)``; ``problem`` says what is wrong without quoting
    the file."""
    try:
        doc: Any = json.loads(raw)
    except ValueError:
        return {}, 0, {}, "not valid JSON"
    if not isinstance(doc, dict) or doc.get("format") != FORMAT:
        return {}, 0, {}, f"expected an object with format {FORMAT!r}"
    items = doc.get("keys")
    if not isinstance(items, list) or not items:
        return {}, 0, {}, "'keys' must be a non-empty list"
    keys: dict[int, _Kek] = {}
    for n, item in enumerate(items):
        if not isinstance(item, dict):
            return {}, 0, {}, f"key #{n} is not an object"
        kid, encoded = item.get("id"), item.get("key")
        created = _number(item.get("created_at"))
        if type(kid) is not int or not 0 <= kid <= MAX_KEK_ID or kid in keys:
            return {}, 0, {}, f"key #{n} has a missing, duplicate or out-of-range id"
        if created is None:
            return {}, 0, {}, f"key {kid} has no numeric created_at"
        key = _b64(encoded)
        if key is None or len(key) != KEK_SIZE:
            return {}, 0, {}, f"key {kid} is not 32 bytes of base64"
        keys[kid] = _Kek(created, key)
    active = doc.get("active")
    if type(active) is not int or active not in keys:
        return {}, 0, {}, "'active' does not name a key in the file"
    stones = doc.get("destroyed", [])
    if not isinstance(stones, list):
        return {}, 0, {}, "'destroyed' must be a list"
    tombstones: dict[int, Tombstone] = {}
    for n, item in enumerate(stones):
        kid = item.get("id") if isinstance(item, dict) else None
        created = _number(item.get("created_at")) if isinstance(item, dict) else None
        destroyed = _number(item.get("destroyed_at")) if isinstance(item, dict) else None
        if type(kid) is not int or kid in keys or kid in tombstones:
            return {}, 0, {}, f"tombstone #{n} has a missing, duplicate or live id"
        if created is None or destroyed is None:
            return {}, 0, {}, f"tombstone {kid} has no numeric times"
        tombstones[kid] = Tombstone(kid, created, destroyed)
    return keys, active, tombstones, None
