"""KEK epochs: a new key-encryption key every hour, and each old one
destroyed once nothing it wrapped can still be alive.

A KEK retires when the next one becomes active; every file it wrapped was
uploaded before then, so every such file expires by ``retired + max_ttl`` and
is purged one interval later. The KEK is destroyed after that plus a grace,
and never while any key row still uses it (a purge that keeps failing holds
it back, loudly). Destroying it makes every leftover copy of the data keys
it wrapped — WAL frames, free pages, backups, replicas — undecryptable.

The destruction is audited first and done second: a crash in between leaves
a record and a key still present, and the next run finishes the destruction
without a second record.

With the ratchet (machines sharing nothing) each instance destroys an epoch
on its own disk at the epoch's deadline, whatever the database says: waiting
for the database (to audit first, or while key rows remain) would let an
outage keep a KEK alive on some machine past its deadline. The record follows:
whichever instance gets there first appends it, once; one that could not
(database down) keeps the epoch pending and appends it on a later pass. Key
rows still wrapped under a destroyed epoch belong to files long expired; they
are unreadable from then on and the purge removes them as usual.
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
from filestore.erasure import Eraser
from filestore.errors import KeyNotFound
from filestore.metadata.base import MetadataStore

log = logging.getLogger(__name__)


@dataclass
class KeyReport:
    rotated_to: int | None = None
    destroyed: list[int] = field(default_factory=list)
    held_back: list[int] = field(default_factory=list)


def destroy_after(settings: Settings) -> float:
    """Seconds from a KEK's retirement until it may be destroyed."""
    return settings.kek_destroy_after


async def manage_keys(
    keyring: KekSource, metadata: MetadataStore, eraser: Eraser, settings: Settings
) -> KeyReport:
    """One key step: rotation and destruction for the keyring, or the
    ratchet's advance, with the audit records either needs."""
    if isinstance(keyring, RatchetKeys):
        return await _advance_ratchet(keyring, metadata, eraser, settings)
    if not isinstance(keyring, Keyring):
        raise TypeError(f"no key management for {type(keyring).__name__}")
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
        if await metadata.files.count_keys(kek_id):
            log.warning("KEK %d is due for destruction but still wraps live keys", kek_id)
            report.held_back.append(kek_id)
            continue
        if await metadata.audit.record_for_kek(kek_id) is None:
            await metadata.audit.append(
                audit_entries.kek_destroyed(
                    kek_id=kek_id,
                    created_at=_created,
                    destroyed_at=now,
                    backend="keyring",
                    actor=eraser.instance,
                    software_version=__version__,
                )
            )
        try:
            await asyncio.to_thread(keyring.destroy, kek_id)
        except KeyNotFound:
            continue  # another process destroyed it (and recorded it) first
        report.destroyed.append(kek_id)
        log.info("destroyed key-encryption key %d", kek_id)
    await check_commitment(keyring, metadata.cluster, now)
    return report


async def _advance_ratchet(
    keys: RatchetKeys, metadata: MetadataStore, eraser: Eraser, settings: Settings
) -> KeyReport:
    report = KeyReport()
    now = eraser.clock.now()
    destroyed = await asyncio.to_thread(keys.ratchet.advance, now, settings.kek_destroy_after)
    keys.note_destroyed(destroyed, now)
    report.destroyed = destroyed
    for epoch in destroyed:
        log.info("destroyed ratchet epoch %d", epoch)
    for epoch, destroyed_at in sorted(keys.unaudited.items()):
        if await metadata.audit.record_for_kek(epoch) is None:
            remaining = await metadata.files.count_keys(epoch)
            await metadata.audit.append(
                audit_entries.kek_destroyed(
                    kek_id=epoch,
                    created_at=keys.ratchet.start_of(epoch),
                    destroyed_at=destroyed_at,
                    backend="ratchet",
                    actor=eraser.instance,
                    software_version=__version__,
                    verification={"no_keys_remaining": remaining == 0},
                )
            )
        del keys.unaudited[epoch]
    # Every instance records (or checks) the commitment of the epoch it now
    # wraps under: a split brain is found within one pass.
    await check_commitment(keys, metadata.cluster, now)
    return report
