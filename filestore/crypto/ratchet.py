"""A forward-secure key schedule ("ratchet") for machines that share no disk.

Why a ratchet
-------------
The keyring file works only where every process can reach one file under one
lock. Gateways on separate machines need three things instead: to unwrap each
other's data keys, to agree on which KEK is current, and to lose a destroyed
KEK everywhere on time. None of that may rest on anything stored in the
shared database, the object store, or a backup, because destroying a KEK is
what makes the stale copies of the DEKs in those places unreadable.

A one-way chain of secrets gives all three with no coordination at runtime::

    secret_{e+1} = HKDF-SHA256(secret_e, info="filestore/v1/ratchet-next" || e)
    KEK_e        = HKDF-SHA256(secret_e, info="filestore/v1/ratchet-kek"  || e)

(``e`` as 4 bytes, big-endian; no salt; 32-byte outputs). Epoch ``e`` covers
``[genesis + (e-1)*period, genesis + e*period)``, so every machine works out
the current epoch from its own clock; the KEK id stored beside a wrapped DEK
is simply ``e``. The genesis is normally the Unix epoch (time 0), which makes
ids absolute hours (for hourly epochs): a ratchet starts at the epoch covering
its creation, and its ids never collide with a previous keyring's or
ratchet's. Whoever holds ``secret_e`` can compute every later KEK, but
nothing earlier: HKDF cannot be run backwards. A machine's state file holds
only the secret of the *oldest epoch not yet destroyed*; destroying epochs
means overwriting that file with a later secret, after which the older KEKs
cannot be recomputed from anything left on the machine.

The destruction deadline of epoch ``e`` is ``end_of(e) + destroy_after``,
where the caller picks ``destroy_after`` (max TTL + purge interval + grace;
the grace must also cover clock skew between machines, because a machine whose
clock runs behind still wraps under ``e`` a little after ``end_of(e)``).
Every machine that calls :meth:`RatchetKeyring.advance` with the same
``destroy_after`` destroys the same epochs at the same time, each on its own
disk. An epoch the caller's clock says is current is never destroyed.

A new machine gets the state from a running one through the authenticated
hand-over in :mod:`filestore.crypto.join`; :meth:`RatchetKeyring.export_state`
and :meth:`RatchetKeyring.from_state` are its two ends.

**The ratchet file must never be backed up, snapshotted or copied** other
than by the hand-over. A copy taken before a destruction revives every epoch
it covers — that copy plus a database backup is all an attacker needs to read
files that were supposed to be gone. Put it on a disk excluded from backups
(``emptyDir``/tmpfs, a host path outside the backup set). A running process
pushes a file that went backwards (restored from a copy) forward again on its
next :meth:`~RatchetKeyring.advance`, but the copy itself remains a risk.
Replacing the file by rename frees the old version's disk blocks without
wiping them (nor can an in-place overwrite be trusted on SSDs or
copy-on-write filesystems); a memory-backed filesystem avoids that residue,
at the price that a rebooted machine must join again.

What it does not protect
------------------------
The chain only runs forward, so it does not heal: whoever obtains a ratchet
file (or a copy of the state by any other route, such as joining with the
cluster secret) can compute every KEK from that file's epoch on, including
all future ones. Recovering from such a compromise means creating a new
ratchet and moving every instance to it; a new ratchet's epochs overlap the
old one's, so the caller must tell the two apart (or let the old one's files
expire first) during the change-over.

Split-brain check
-----------------
:meth:`RatchetKeyring.commitment` is ``HMAC-SHA256(KEK_e,
"filestore/v1/ratchet-commitment")``. It reveals nothing about the KEK (HMAC is
a PRF under it) and may go into the shared database: a machine whose
commitment for an epoch differs from the stored one runs a different ratchet
(it was created instead of joined) and must not serve.

File format
-----------
JSON, mode 0600, rewritten atomically (temporary file, fsync, rename, fsync of
the directory)::

    {"format": "filestore-ratchet/1", "genesis": 0.0,
     "period": 3600.0, "epoch": 500001, "secret": "<base64 of 32 bytes>",
     "warning": "…never back up or copy this file…"}

``epoch`` is the oldest epoch not yet destroyed and ``secret`` its chain
secret. ``warning`` is for humans and ignored when reading. ``advance`` also
keeps an empty ``<name>.lock`` file beside it for the file lock.

Threads, time, I/O
------------------
Every method that depends on time takes it as a parameter (``at``: Unix
seconds or a :class:`~filestore.clock.Clock`); nothing reads the wall clock.
:meth:`~RatchetKeyring.create`, :meth:`~RatchetKeyring.load`,
:meth:`~RatchetKeyring.from_state` and :meth:`~RatchetKeyring.advance` do
blocking file I/O with fsync (run them in a thread in async code); the rest
touch no files and are cheap enough for the event loop. All methods are
thread-safe. Several processes of one host may share one ratchet file:
:meth:`~RatchetKeyring.advance` holds a file lock, starts from what the file
says, and never moves the file backwards.

Memory
------
Secrets and KEKs are kept in ``bytearray`` buffers that are overwritten with
zeros when their epoch is destroyed. This is best effort only: HKDF outputs
are written straight into those buffers, but ``cryptography`` copies a key
into each AES-GCM/HMAC context it builds, Python may have copied bytes
objects elsewhere (the exported state, JSON text read from the file), and
nothing is locked out of swap. The guarantee that matters — no *stored* copy
of a destroyed KEK's origin — comes from overwriting the file.

Key bytes never appear in a repr or an exception message.
"""

from __future__ import annotations

import base64
import contextlib
import fcntl
import hmac
import json
import math
import os
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final

from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives import hmac as crypto_hmac
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from filestore.clock import Clock
from filestore.crypto import wrapping
from filestore.crypto._files import b64_or_none as _b64
from filestore.crypto._files import ensure_private_dir, read_private_file, write_private_file
from filestore.crypto.keyring import MAX_KEK_ID
from filestore.crypto.wrapping import DekBinding
from filestore.errors import ConfigError, KeyDestroyed, KeyNotFound

__all__ = [
    "FORMAT",
    "SECRET_SIZE",
    "RatchetKeyring",
    "RatchetState",
]

FORMAT: Final = "filestore-ratchet/1"
SECRET_SIZE: Final = 32
KEK_INFO: Final = b"filestore/v1/ratchet-kek"
NEXT_INFO: Final = b"filestore/v1/ratchet-next"
COMMITMENT_LABEL: Final = b"filestore/v1/ratchet-commitment"
#: Shortest rotation interval accepted. Sub-second epochs serve no purpose and
#: would exhaust the 32-bit epoch ids within decades.
MIN_PERIOD: Final = 1.0
_WARNING: Final = (
    "Never back up, snapshot or copy this file: a copy revives key-encryption "
    "keys that were destroyed. New instances get it through the join hand-over."
)


# ------------------------------------------------------------------ the state
@dataclass(frozen=True)
class RatchetState:
    """What a ratchet is: its schedule and the chain secret of ``epoch``,
    the oldest epoch whose KEK still exists.

    This is what the hand-over carries and what the file stores. The secret
    is left out of the repr. ValueError for values no ratchet can have.
    """

    genesis: float
    period: float
    epoch: int
    secret: bytes = field(repr=False)

    def __post_init__(self) -> None:
        problem = _state_problem(self.genesis, self.period, self.epoch, self.secret)
        if problem is not None:
            raise ValueError(f"invalid ratchet state: {problem}")

    def current_epoch(self, now: float) -> int:
        """The epoch covering ``now``; see :meth:`RatchetKeyring.current_epoch`."""
        return _current(self.genesis, self.period, now)

    def end_of(self, epoch: int) -> float:
        """When ``epoch`` stops being current."""
        return self.genesis + epoch * self.period


def _state_problem(genesis: object, period: object, epoch: object, secret: object) -> str | None:
    """What is wrong with these values, without quoting any of them, or None."""
    start = _finite(genesis)
    if start is None or start < 0:
        return "genesis must be a finite, non-negative number of seconds"
    length = _finite(period)
    if length is None or length < MIN_PERIOD:
        return f"period must be a finite number of seconds >= {MIN_PERIOD}"
    if type(epoch) is not int or not 1 <= epoch <= MAX_KEK_ID:
        return f"epoch must be an integer from 1 to {MAX_KEK_ID}"
    if not isinstance(secret, bytes) or len(secret) != SECRET_SIZE:
        return f"the secret must be {SECRET_SIZE} bytes"
    return None


def _finite(value: object) -> float | None:
    """``value`` as a float if it is a finite int or float (not a bool)."""
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    number = float(value)
    return number if math.isfinite(number) else None


def _current(genesis: float, period: float, now: float) -> int:
    """``floor((now - genesis) / period) + 1``; times before the genesis
    count as epoch 1 (a clock slightly behind the creator's, just after
    creation, must still have an epoch to wrap under)."""
    if not math.isfinite(now):
        raise ValueError("the time must be finite")
    return max(1, math.floor((now - genesis) / period) + 1)


def _now(at: float | Clock) -> float:
    return float(at) if isinstance(at, int | float) else at.now()


# ----------------------------------------------------------------- derivation
def _hkdf_into(out: bytearray, key_material: bytes | bytearray, info: bytes) -> None:
    HKDF(algorithm=hashes.SHA256(), length=len(out), salt=None, info=info).derive_into(
        key_material, out
    )


def _zero(buf: bytearray) -> None:
    buf[:] = bytes(len(buf))  # same length: overwritten in place, not reallocated


def _next_secret(secret: bytearray, epoch: int) -> bytearray:
    """``secret_{epoch+1}`` from ``secret_epoch``."""
    out = bytearray(SECRET_SIZE)
    _hkdf_into(out, secret, NEXT_INFO + epoch.to_bytes(4, "big"))
    return out


class _Epoch:
    """One epoch's chain secret and KEK, in buffers that can be zeroed."""

    __slots__ = ("_aead", "kek", "secret")

    def __init__(self, epoch: int, secret: bytearray) -> None:
        self.secret = secret
        self.kek = bytearray(SECRET_SIZE)
        _hkdf_into(self.kek, secret, KEK_INFO + epoch.to_bytes(4, "big"))
        self._aead: AESGCM | None = None

    def cipher(self) -> AESGCM:
        """The epoch's AES-GCM context, built on first use. One per epoch
        rather than one per call, and none for epochs only passed through
        while deriving: the library copies the key into each context, so
        fewer contexts leave fewer copies. Caller holds the keyring's lock."""
        if self._aead is None:
            self._aead = AESGCM(self.kek)
        return self._aead

    def destroy(self) -> None:
        _zero(self.secret)
        _zero(self.kek)
        self._aead = None

    def __repr__(self) -> str:
        return "_Epoch(<secret>)"


# -------------------------------------------------------------------- keyring
class RatchetKeyring:
    """KEKs of a forward-secure schedule, held in one machine's state file.

    See the module docstring. Build one with :meth:`create`, :meth:`load` or
    :meth:`from_state`; the constructor is not public.
    """

    def __init__(self, path: Path, state: RatchetState) -> None:
        """Use :meth:`create`, :meth:`load` or :meth:`from_state`; this does
        not touch disk."""
        self._path = path
        self._genesis = state.genesis
        self._period = state.period
        # Epoch -> secret and KEK, from the oldest live epoch up to the
        # furthest one derived so far; contiguous. Guarded by _lock, which is
        # held only for lookups and derivation (never for file I/O), so wrap
        # and unwrap are not blocked while advance() fsyncs.
        self._chain: dict[int, _Epoch] = {state.epoch: _Epoch(state.epoch, bytearray(state.secret))}
        self._base = state.epoch
        self._lock = threading.Lock()
        # Serialises advance() calls within the process; the file lock
        # serialises them between processes.
        self._write_lock = threading.Lock()

    def __repr__(self) -> str:
        return (
            f"RatchetKeyring(path={str(self._path)!r}, genesis={self._genesis}, "
            f"period={self._period}, oldest_epoch={self._base})"
        )

    # ------------------------------------------------------------------ files
    @classmethod
    def create(
        cls, path: Path, now: float, period: float, *, genesis: float = 0.0
    ) -> RatchetKeyring:
        """Start a new ratchet — the first instance of a cluster only; every
        other instance joins. Blocking.

        The genesis defaults to the Unix epoch, so epoch boundaries fall on
        multiples of ``period`` (on the hour for 3600 s) and epoch ids are
        absolute: ``floor(now / period) + 1``, about 500,000 for hourly
        epochs today. The ratchet starts at the epoch covering ``now``
        (earlier ids never existed) with a random secret. Absolute ids cannot
        collide with the small ids of a keyring this cluster used before, or
        with those of an earlier ratchet, in the database's KEK id column.
        Pass ``genesis`` (at most ``now``) to number from another origin.

        Missing directories are created with mode 0700. FileExistsError if
        ``path`` exists (load it instead); ValueError for a bad ``now``,
        ``period`` or ``genesis``.
        """
        length = _finite(period)
        if length is None or length < MIN_PERIOD:
            raise ValueError(f"the period must be a finite number of seconds >= {MIN_PERIOD}")
        if not math.isfinite(now) or now < 0:
            raise ValueError("the time must be finite and non-negative")
        start = _finite(genesis)
        if start is None or not 0 <= start <= now:
            raise ValueError("the genesis must be a time between 0 and now")
        epoch = _current(start, length, now)
        if epoch > MAX_KEK_ID:
            raise ValueError("the period is too short: epoch ids would not fit in 32 bits")
        state = RatchetState(start, length, epoch, os.urandom(SECRET_SIZE))
        return cls._create_file(path, state)

    @classmethod
    def from_state(cls, path: Path, state: RatchetState) -> RatchetKeyring:
        """Write ``state`` (received through the join hand-over) to a new
        file at ``path`` and return the ratchet. Blocking.

        The sender's oldest epoch may be past this instance's deadline:
        call :meth:`advance` at once. FileExistsError if ``path`` exists —
        an instance that already has a ratchet must not silently swap it.
        """
        if not isinstance(state, RatchetState):
            raise TypeError("from_state needs a RatchetState")
        return cls._create_file(path, state)

    @classmethod
    def _create_file(cls, path: Path, state: RatchetState) -> RatchetKeyring:
        ensure_private_dir(path.parent)
        write_private_file(path, _encode(state), replace=False)
        return cls(path, state)

    @classmethod
    def load(cls, path: Path) -> RatchetKeyring:
        """Load the ratchet at ``path``. Blocking.

        The file may hold epochs whose deadline has passed (the process was
        down): call :meth:`advance` before serving. FileNotFoundError if it
        does not exist; ConfigError naming the path (never a key) if it is
        malformed or accessible by group or others.
        """
        return cls(path, _parse(path, read_private_file(path)))

    # ----------------------------------------------------------------- access
    @property
    def path(self) -> Path:
        return self._path

    @property
    def genesis(self) -> float:
        """Start of epoch 1, Unix seconds."""
        return self._genesis

    @property
    def period(self) -> float:
        """Length of an epoch in seconds (the rotation interval)."""
        return self._period

    @property
    def oldest_epoch(self) -> int:
        """The oldest epoch whose KEK this instance still has."""
        with self._lock:
            return self._base

    def current_epoch(self, at: float | Clock) -> int:
        """The epoch (and KEK id) covering time ``at``: the same answer on
        every machine whose clock agrees. Times before the genesis count as
        epoch 1."""
        return _current(self._genesis, self._period, _now(at))

    def start_of(self, epoch: int) -> float:
        """When ``epoch`` becomes current."""
        return self._genesis + (epoch - 1) * self._period

    def end_of(self, epoch: int) -> float:
        """When ``epoch`` stops being current (new DEKs go to ``epoch + 1``)."""
        return self._genesis + epoch * self._period

    def deadline(self, epoch: int, destroy_after: float) -> float:
        """When ``epoch`` is due for destruction: ``end_of(epoch) + destroy_after``."""
        return self.end_of(epoch) + destroy_after

    def export_state(self) -> RatchetState:
        """The state to hand to a joining instance: schedule and the secret of
        the oldest epoch this instance still holds. Call :meth:`advance`
        first, so nothing past its deadline is handed on. The returned object
        holds the secret as immutable bytes: drop it once sent."""
        with self._lock:
            return RatchetState(
                self._genesis, self._period, self._base, bytes(self._chain[self._base].secret)
            )

    # ------------------------------------------------------------------- keys
    def _epoch(self, epoch: int) -> _Epoch:
        """The live epoch ``epoch``, deriving forward as needed. Caller holds
        _lock and has checked ``epoch >= self._base`` and its upper bound."""
        tip = max(self._chain)
        while tip < epoch:
            nxt = _next_secret(self._chain[tip].secret, tip)
            tip += 1
            self._chain[tip] = _Epoch(tip, nxt)
        return self._chain[epoch]

    def _cipher(self, epoch: int, now: float) -> AESGCM:
        """The AES-GCM context of a usable epoch; see :meth:`_live`.

        The caller encrypts or decrypts outside the lock. If the epoch is
        destroyed meanwhile, that one operation, begun before, still
        completes; the next lookup fails."""
        with self._lock:
            return self._live(epoch, now).cipher()

    def _live(self, epoch: int, now: float) -> _Epoch:
        """The epoch's keys, or KeyNotFound for a destroyed epoch or one more
        than one epoch ahead of the clock. Caller holds _lock.

        The one epoch of slack tolerates a peer whose clock runs ahead across
        an epoch boundary. The bound also caps how far one call can make us
        derive: a forged id of 2**32-1 would otherwise cost billions of HKDF
        runs.
        """
        if epoch < self._base:
            raise KeyDestroyed(
                f"key-encryption key {epoch} has been destroyed (or predates this ratchet)"
            )
        if epoch > _current(self._genesis, self._period, now) + 1 or epoch > MAX_KEK_ID:
            raise KeyNotFound(f"key-encryption key {epoch} belongs to a future epoch")
        return self._epoch(epoch)

    def wrap(self, dek: bytes, binding: DekBinding, at: float | Clock) -> tuple[int, bytes]:
        """Wrap ``dek`` under the KEK of the epoch current at ``at``:
        ``(kek_id, wrapped)`` in the layout of :mod:`filestore.crypto.wrapping`,
        the same as the keyring's.

        KeyNotFound if the clock is so far behind that its epoch has already
        been destroyed here (wrapping then would produce unreadable files);
        ConfigError once epoch ids are exhausted.
        """
        now = _now(at)
        epoch = _current(self._genesis, self._period, now)
        if epoch > MAX_KEK_ID:
            raise ConfigError(f"ratchet file {self._path} has run out of epoch ids")
        return epoch, wrapping.seal_dek(self._cipher(epoch, now), epoch, binding, dek)

    def unwrap(self, kek_id: int, binding: DekBinding, wrapped: bytes, at: float | Clock) -> bytes:
        """The DEK bound to ``binding``.

        KeyDestroyed if epoch ``kek_id`` has been destroyed; KeyNotFound if it
        is not a valid id or is more than one epoch ahead of the clock at
        ``at``; IntegrityError if the wrapped key was altered or belongs to
        another file, tenant or epoch.
        """
        return wrapping.open_dek(self._cipher_of(kek_id, at), kek_id, binding, wrapped)

    def rewrap(
        self, kek_id: int, binding: DekBinding, wrapped: bytes, at: float | Clock
    ) -> bytes | None:
        """A legacy (pre-tenant) wrap re-sealed under the same epoch, or None
        if it is current; errors as for :meth:`unwrap`."""
        return wrapping.rewrap(self._cipher_of(kek_id, at), kek_id, binding, wrapped)

    def _cipher_of(self, kek_id: object, at: float | Clock) -> AESGCM:
        """:meth:`_cipher` for an id read from the database, checked first."""
        if type(kek_id) is not int or kek_id < 1:
            raise KeyNotFound(f"key-encryption key {kek_id!r} is not a ratchet epoch")
        return self._cipher(kek_id, _now(at))

    def commitment(self, epoch: int, at: float | Clock) -> bytes:
        """``HMAC-SHA256(KEK_epoch, "filestore/v1/ratchet-commitment")``: 32
        bytes that may be stored in the shared database, so that instances
        running different ratchets notice. KeyNotFound as for :meth:`unwrap`."""
        if type(epoch) is not int or epoch < 1:
            raise KeyNotFound(f"key-encryption key {epoch!r} is not a ratchet epoch")
        with self._lock:
            # Look up and MAC under the lock: destroy() zeroes the buffer.
            keys = self._live(epoch, _now(at))
            mac = crypto_hmac.HMAC(keys.kek, hashes.SHA256())
        mac.update(COMMITMENT_LABEL)
        return mac.finalize()

    # ------------------------------------------------------------ destruction
    def _last_due(self, now: float, destroy_after: float) -> int:
        """The newest epoch whose deadline is at or before ``now`` (0 if none),
        never the epoch the clock says is current nor a later one."""
        if not math.isfinite(destroy_after) or destroy_after < 0:
            raise ValueError("destroy_after must be a finite, non-negative number of seconds")
        if not math.isfinite(now):
            raise ValueError("the time must be finite")
        # Estimate with division, then settle on the exact rule
        # deadline(e) <= now so that float rounding cannot disagree with it.
        last = max(0, math.floor((now - destroy_after - self._genesis) / self._period))
        while last > 0 and self.deadline(last, destroy_after) > now:
            last -= 1
        while self.deadline(last + 1, destroy_after) <= now:
            last += 1
        return min(last, _current(self._genesis, self._period, now) - 1, MAX_KEK_ID)

    def due(self, at: float | Clock, destroy_after: float) -> list[int]:
        """Epochs still held here whose deadline has passed at ``at``: what
        :meth:`advance` would destroy. Lets a caller audit (or hold back)
        before destroying."""
        last = self._last_due(_now(at), destroy_after)
        with self._lock:
            return list(range(self._base, last + 1))

    def advance(
        self, at: float | Clock, destroy_after: float, *, keep_from: int | None = None
    ) -> list[int]:
        """Destroy every epoch whose deadline has passed at ``at``; return the
        ids this instance held and no longer holds, oldest first. Blocking.

        The state file is overwritten (atomically, fsynced) with the secret of
        the new oldest epoch *before* the KEKs are dropped from memory, so a
        crash never leaves a file older than what was reported destroyed.
        ``keep_from`` holds back that epoch and all later ones (for instance
        while keys wrapped under it are still in the database); because the
        chain runs one way, an epoch cannot be kept while an older one goes.

        Under the file lock the file is read first: if another process
        sharing it advanced further, that is adopted (and reported); if the
        file is behind this process (restored from a copy), it is pushed
        forward. ConfigError if the file holds a different ratchet, is more
        than one epoch ahead of the clock, or is unreadable.
        """
        now = _now(at)
        target = self._last_due(now, destroy_after) + 1
        if keep_from is not None:
            target = min(target, keep_from)
        with self._write_lock, self._file_lock():
            on_disk = _parse(self._path, read_private_file(self._path))
            if (on_disk.genesis, on_disk.period) != (self._genesis, self._period):
                raise ConfigError(f"ratchet file {self._path} now holds a different ratchet")
            if on_disk.epoch > _current(self._genesis, self._period, now) + 1:
                raise ConfigError(
                    f"ratchet file {self._path} is ahead of the clock (epoch {on_disk.epoch}); "
                    "check the system time"
                )
            with self._lock:
                self._check_same_chain(on_disk)
                new_base = max(target, on_disk.epoch, self._base)
                old_base = self._base
                # Deriving forward to new_base is bounded: it is at most the
                # current epoch (_last_due), the file's epoch or our own base.
                secret = bytes(self._epoch(new_base).secret)
            if new_base != on_disk.epoch:
                state = RatchetState(self._genesis, self._period, new_base, secret)
                write_private_file(self._path, _encode(state))
            del secret
            with self._lock:
                self._epoch(new_base)
                for epoch in [e for e in self._chain if e < new_base]:
                    self._chain.pop(epoch).destroy()
                self._base = new_base
            return list(range(old_base, new_base))

    def _check_same_chain(self, on_disk: RatchetState) -> None:
        """ConfigError unless the file's secret lies on this process's chain.
        Caller holds _lock; derivation is bounded by the epoch checks done
        before."""
        if on_disk.epoch >= self._base:
            ours = self._epoch(on_disk.epoch).secret
            same = hmac.compare_digest(ours, on_disk.secret)
        else:
            cursor = bytearray(on_disk.secret)
            for epoch in range(on_disk.epoch, self._base):
                nxt = _next_secret(cursor, epoch)
                _zero(cursor)
                cursor = nxt
            same = hmac.compare_digest(cursor, self._chain[self._base].secret)
            _zero(cursor)
        if not same:
            raise ConfigError(f"ratchet file {self._path} now holds a different ratchet")

    @contextlib.contextmanager
    def _file_lock(self) -> Iterator[None]:
        lock_path = self._path.with_name(self._path.name + ".lock")
        fd = os.open(lock_path, os.O_CREAT | os.O_RDWR | os.O_CLOEXEC, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            yield
        finally:
            os.close(fd)  # releases the flock


# ----------------------------------------------------------------- the file
def _encode(state: RatchetState) -> bytes:
    doc = {
        "format": FORMAT,
        "genesis": state.genesis,
        "period": state.period,
        "epoch": state.epoch,
        "secret": base64.b64encode(state.secret).decode("ascii"),
        "warning": _WARNING,
    }
    return json.dumps(doc, indent=2).encode("ascii") + b"\n"


def _parse(path: Path, raw: bytes) -> RatchetState:
    # Raised outside any ``except`` block so that no exception holding the
    # file's text (JSONDecodeError.doc) is chained to the ConfigError.
    state, problem = _decode(raw)
    if state is None:
        raise ConfigError(f"ratchet file {path} is malformed: {problem}")
    return state


def _decode(raw: bytes) -> tuple[RatchetState | None, str]:
    """``(state, "")`` or ``(None, problem)``; the problem never quotes the file."""
    try:
        doc: Any = json.loads(raw)
    except ValueError:
        return None, "not valid JSON"
    if not isinstance(doc, dict) or doc.get("format") != FORMAT:
        return None, f"expected an object with format {FORMAT!r}"
    secret = _b64(doc.get("secret"))
    genesis, period, epoch = doc.get("genesis"), doc.get("period"), doc.get("epoch")
    problem = _state_problem(genesis, period, epoch, secret)
    start, length = _finite(genesis), _finite(period)
    if problem or start is None or length is None or not isinstance(epoch, int) or not secret:
        return None, problem or "invalid values"
    return RatchetState(start, length, epoch, secret), ""
