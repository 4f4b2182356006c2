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


class KekSource(Protocol):
    """What wrapping and unwrapping need. ``reload`` is blocking (run it in a
    thread) and picks up what another process on the same host changed."""

    @property
    def active_id(self) -> int:
        """The KEK id new data keys are wrapped under now."""

    def wrap(self, dek: bytes, file_id: bytes) -> tuple[int, bytes]: ...

    def unwrap(self, kek_id: int, file_id: bytes, wrapped: bytes) -> bytes: ...

    def reload(self) -> None: ...


class RatchetKeys:
    """A :class:`RatchetKeyring` on the process's clock, as a :class:`KekSource`.

    The scheduler advances the ratchet (destroying epochs past their
    deadline); a join request is answered from :attr:`ratchet`. ``reload``
    re-reads the file, for processes of one host sharing it.
    """

    def __init__(self, ratchet: RatchetKeyring, clock: Clock) -> None:
        self._ratchet = ratchet
        self._clock = clock
        self._lock = threading.Lock()
        #: Epochs destroyed here whose audit record is not yet known to be
        #: written (the database was down when they went).
        self.unaudited: set[int] = set()

    @property
    def ratchet(self) -> RatchetKeyring:
        return self._ratchet

    @property
    def active_id(self) -> int:
        return self._ratchet.current_epoch(self._clock)

    def wrap(self, dek: bytes, file_id: bytes) -> tuple[int, bytes]:
        return self._ratchet.wrap(dek, file_id, self._clock)

    def unwrap(self, kek_id: int, file_id: bytes, wrapped: bytes) -> bytes:
        return self._ratchet.unwrap(kek_id, file_id, wrapped, self._clock)

    def reload(self) -> None:
        with self._lock:
            fresh = RatchetKeyring.load(self._ratchet.path)
            if fresh.oldest_epoch > self._ratchet.oldest_epoch:
                self._ratchet = fresh

    def __repr__(self) -> str:
        return f"RatchetKeys({self._ratchet!r})"
