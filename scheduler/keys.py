"""KEK epochs: a new key-encryption key every hour, and each old one
destroyed at its deadline, whatever the database says.

A KEK retires when the next one becomes active; every file it wrapped was
uploaded before then, so every such file expires by ``retired + max_ttl`` and
is purged one interval later. The KEK's deadline is that plus a grace
(``Settings.kek_destroy_after``), and at the deadline it is destroyed: this
is the backstop that holds even when the database does not — a row whose
``expires_at`` was pushed ahead (a bug, or a write to the database) or a
purge that keeps failing cannot keep a file readable, because its DEK can no
longer be unwrapped. Destroying the KEK also makes every leftover copy of
the data keys it wrapped — WAL frames, free pages, backups, replicas —
undecryptable.

After the destruction comes the settlement, which needs the database: any
file still wrapped under the KEK is handed to deletion with reason
``kek_destroyed`` (the next purge pass removes its blob and audits it), and
the destruction itself is audited once, saying whether keys remained. With
the keyring, a tombstone written in the same atomic rewrite that drops the
key remembers the destruction until it is settled, so a crash or an outage
in between loses nothing; with the ratchet (machines sharing nothing) each
instance destroys an epoch on its own disk and whichever gets to the
database first appends the record.

The key step also finishes the upgrade to tenant-bound key wraps: any key
still in the pre-tenant layout is re-sealed under the same KEK, a batch at
a time (:func:`rewrap_legacy_keys`).
"""

from __future__ import annotations

import asyncio
import itertools
import logging
from dataclasses import dataclass, field

from filestore import __version__
from filestore.audit import entries as audit_entries
from filestore.commitment import check_commitment
from filestore.config import Settings
from filestore.crypto import Keyring
from filestore.crypto.schedule import KekSource, RatchetKeys
from filestore.crypto.wrapping import DekBinding
from filestore.erasure import Eraser
from filestore.errors import FilestoreError, IntegrityError, KeyNotFound
from filestore.metadata.base import FileKey, MetadataStore

log = logging.getLogger(__name__)


@dataclass
class KeyReport:
    rotated_to: int | None = None
    destroyed: list[int] = field(default_factory=list)
    #: Destroyed at the deadline while files it wrapped remained (they are
    #: crypto-erased and handed to the purge).
    forced: list[int] = field(default_factory=list)
    #: Destroyed, but the settlement (records, hand-over) is still pending:
    #: the database could not be reached. Retried every step.
    held_back: list[int] = field(default_factory=list)
    #: Keys re-sealed from the pre-tenant layout in this step.
    rewrapped: int = 0


def destroy_after(settings: Settings) -> float:
    """Seconds from a KEK's retirement until it is destroyed."""
    return settings.kek_destroy_after


#: Legacy keys re-sealed per batch, and batches per key step: an upgrade
#: with a day of live files finishes within a few steps, and no step is long.
REWRAP_BATCH = 500
REWRAP_MAX_BATCHES = 20


async def manage_keys(
    keyring: KekSource, metadata: MetadataStore, eraser: Eraser, settings: Settings
) -> KeyReport:
    """One key step: rotation and destruction for the keyring, or the
    ratchet's advance; then the settlement of every destroyed KEK and the
    re-sealing of legacy keys, each as far as the database allows."""
    if isinstance(keyring, RatchetKeys):
        report = await _advance_ratchet(keyring, eraser, settings)
    elif isinstance(keyring, Keyring):
        report = await _rotate_and_destroy(keyring, eraser, settings)
    else:
        raise TypeError(f"no key management for {type(keyring).__name__}")
    # Destruction never waits for the database; what follows does.
    for kek_id, created_at, destroyed_at in _unsettled(keyring):
        try:
            remaining = await _settle(
                metadata, eraser, kek_id, created_at, destroyed_at, _backend(keyring)
            )
        except FilestoreError as exc:
            log.error("KEK %d destroyed; its record is pending: %s", kek_id, type(exc).__name__)
            report.held_back.append(kek_id)
            continue
        await _forget(keyring, kek_id)
        if remaining:
            report.forced.append(kek_id)
    if report.held_back:
        return report  # the database is not answering: the rest waits too
    report.rewrapped = await rewrap_legacy_keys(keyring, metadata)
    await check_commitment(keyring, metadata.cluster, eraser.clock.now())
    return report


async def _rotate_and_destroy(keyring: Keyring, eraser: Eraser, settings: Settings) -> KeyReport:
    report = KeyReport()
    now = eraser.clock.now()
    # Other processes may share the keyring file: start from what it says.
    await asyncio.to_thread(keyring.reload)
    entries = sorted(keyring.entries())
    active_created = dict(entries)[keyring.active_id]
    if now - active_created >= settings.kek_rotation:
        before = keyring.active_id
        active = await asyncio.to_thread(keyring.rotate, now, settings.kek_rotation)
        if active != before:
            report.rotated_to = active
            log.info("rotated the key-encryption key to id %d", active)
        entries = sorted(keyring.entries())
    for (kek_id, _created), (_next_id, retired_at) in itertools.pairwise(entries):
        if kek_id == keyring.active_id or now < retired_at + destroy_after(settings):
            continue
        try:
            await asyncio.to_thread(keyring.destroy, kek_id, now)
        except KeyNotFound:
            continue  # another process destroyed it first (its tombstone is shared)
        report.destroyed.append(kek_id)
        log.info("destroyed key-encryption key %d", kek_id)
    return report


async def _advance_ratchet(keys: RatchetKeys, eraser: Eraser, settings: Settings) -> KeyReport:
    now = eraser.clock.now()
    destroyed = await asyncio.to_thread(keys.ratchet.advance, now, settings.kek_destroy_after)
    keys.note_destroyed(destroyed, now)
    for epoch in destroyed:
        log.info("destroyed ratchet epoch %d", epoch)
    return KeyReport(destroyed=destroyed)


def _unsettled(keys: KekSource) -> list[tuple[int, float, float]]:
    """``(kek_id, created_at, destroyed_at)`` of each destroyed KEK not yet
    settled here."""
    if isinstance(keys, RatchetKeys):
        return [
            (epoch, keys.ratchet.start_of(epoch), when)
            for epoch, when in sorted(keys.unaudited.items())
        ]
    assert isinstance(keys, Keyring)
    return [(t.kek_id, t.created_at, t.destroyed_at) for t in keys.tombstones()]


def _backend(keys: KekSource) -> str:
    return "ratchet" if isinstance(keys, RatchetKeys) else "keyring"


async def _forget(keys: KekSource, kek_id: int) -> None:
    if isinstance(keys, RatchetKeys):
        keys.unaudited.pop(kek_id, None)
    else:
        assert isinstance(keys, Keyring)
        await asyncio.to_thread(keys.forget, kek_id)


async def _settle(
    metadata: MetadataStore,
    eraser: Eraser,
    kek_id: int,
    created_at: float,
    destroyed_at: float,
    backend: str,
) -> int:
    """Hand the files a destroyed KEK still wrapped to deletion and audit the
    destruction once; return how many keys remained. Idempotent: a crash or
    another instance doing the same leaves one record."""
    remaining = await metadata.files.count_keys(kek_id)
    if remaining:
        doomed = await metadata.files.doom_wrapped_under(kek_id)
        log.error(
            "KEK %d reached its deadline while %d keys it wrapped remained: destroyed "
            "anyway; %d files handed to the purge as kek_destroyed",
            kek_id,
            remaining,
            doomed,
        )
    if await metadata.audit.record_for_kek(kek_id) is None:
        await metadata.audit.append(
            audit_entries.kek_destroyed(
                kek_id=kek_id,
                created_at=created_at,
                destroyed_at=destroyed_at,
                backend=backend,
                actor=eraser.instance,
                software_version=__version__,
                verification={"no_keys_remaining": remaining == 0},
            )
        )
    return remaining


async def rewrap_legacy_keys(keys: KekSource, metadata: MetadataStore) -> int:
    """Re-seal keys still in the pre-tenant wrap layout under the same KEK,
    binding their tenant; return how many. Keys whose KEK is gone or whose
    wrap does not open (already unreadable) are left for the purge."""
    done = 0
    after = b""
    for _ in range(REWRAP_MAX_BATCHES):
        batch = await metadata.files.legacy_keys(after, REWRAP_BATCH)
        if not batch:
            break
        after = batch[-1][0].file_id
        changes: list[tuple[FileKey, bytes]] = []
        for key, tenant in batch:
            try:
                fresh = keys.rewrap(key.kek_id, DekBinding(key.file_id, tenant), key.wrapped)
            except (KeyNotFound, IntegrityError):
                continue  # unreadable already; the purge takes it in time
            if fresh is not None:
                changes.append((key, fresh))
        done += await metadata.files.replace_keys(changes)
    if done:
        log.info("re-sealed %d keys in the tenant-bound layout", done)
    return done
