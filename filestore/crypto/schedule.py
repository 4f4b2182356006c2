"""Where key-encryption keys come from, as one small interface.

The uploads and reads only wrap and unwrap; they need not know whether KEKs
live in a keyring file shared by the processes of one host
(:class:`~filestore.crypto.keyring.Keyring`) or are derived from a
forward-secure ratchet each machine keeps on its own disk
(:class:`~filestore.crypto.ratchet.RatchetKeyring`, adapted here by
:class:`RatchetKeys`). Which one runs is a setting; what each gives and what
an attacker holding each secret can read is in docs/architecture.md.
"""

from __future__ import annotations

import threading
from typing import Protocol

from filestore.clock import Clock
from filestore.crypto.ratchet import RatchetKeyring
from filestore.crypto.wrapping import DekBinding
from filestore.errors import KeyDestroyed


class KekSource(Protocol):
    """What wrapping and unwrapping need. ``reload`` is blocking (run it in a
    thread) and picks up what another process on the same host changed."""

    @property
    def active_id(self) -> int:
        """The KEK id new data keys are wrapped under now."""

    def wrap(self, dek: bytes, binding: DekBinding) -> tuple[int, bytes]: ...

    def unwrap(self, kek_id: int, binding: DekBinding, wrapped: bytes) -> bytes:
        """The DEK; KeyDestroyed once its KEK is destroyed (or past its
        deadline), KeyNotFound for a foreign id, IntegrityError for a wrap
        that is not this file's and tenant's."""

    def rewrap(self, kek_id: int, binding: DekBinding, wrapped: bytes) -> bytes | None:
        """A legacy wrap re-sealed in the current layout, or None."""

    def commitment(self, kek_id: int) -> bytes:
        """A value the shared database may hold that equals another
        instance's only if both hold the same KEK under ``kek_id``."""

    def reload(self) -> None: ...


class RatchetKeys:
    """A :class:`RatchetKeyring` on the process's clock, as a :class:`KekSource`.

    The scheduler advances the ratchet (destroying epochs past their
    deadline); a join request is answered from :attr:`ratchet`. ``reload``
    re-reads the file, for processes of one host sharing it.
    """

    def __init__(self, ratchet: RatchetKeyring, clock: Clock, destroy_after: float) -> None:
        self._ratchet = ratchet
        self._clock = clock
        self._destroy_after = destroy_after
        self._lock = threading.Lock()
        #: Epochs destroyed here (and when) whose audit record is not yet
        #: known to be written (the database was down when they went).
        self.unaudited: dict[int, float] = {}

    @property
    def ratchet(self) -> RatchetKeyring:
        return self._ratchet

    @property
    def active_id(self) -> int:
        return self._ratchet.current_epoch(self._clock)

    def wrap(self, dek: bytes, binding: DekBinding) -> tuple[int, bytes]:
        return self._ratchet.wrap(dek, binding, self._clock)

    def unwrap(self, kek_id: int, binding: DekBinding, wrapped: bytes) -> bytes:
        """The DEK; KeyNotFound also for an epoch past its destruction
        deadline that the scheduler has not advanced past yet, so nothing is
        readable under it a moment longer than promised."""
        return self._ratchet.unwrap(kek_id, binding, wrapped, self._usable(kek_id))

    def rewrap(self, kek_id: int, binding: DekBinding, wrapped: bytes) -> bytes | None:
        return self._ratchet.rewrap(kek_id, binding, wrapped, self._usable(kek_id))

    def _usable(self, kek_id: int) -> float:
        """The time now, or KeyDestroyed if ``kek_id`` is past its deadline."""
        now = self._clock.now()
        if now >= self._ratchet.deadline(kek_id, self._destroy_after):
            raise KeyDestroyed(f"key-encryption key {kek_id} is past its destruction deadline")
        return now

    def commitment(self, kek_id: int) -> bytes:
        return self._ratchet.commitment(kek_id, self._clock)

    def note_destroyed(self, epochs: list[int], when: float) -> None:
        """Remember epochs destroyed at ``when`` until they are audited."""
        for epoch in epochs:
            self.unaudited.setdefault(epoch, when)

    def reload(self) -> None:
        with self._lock:
            fresh = RatchetKeyring.load(self._ratchet.path)
            if fresh.oldest_epoch > self._ratchet.oldest_epoch:
                self._ratchet = fresh

    def __repr__(self) -> str:
        return f"RatchetKeys({self._ratchet!r})"
