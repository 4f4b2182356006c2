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
"""

from __future__ import annotations

import asyncio
import itertools
import logging
from dataclasses import dataclass, field

from filestore import __version__
from filestore.audit import entries as audit_entries
from filestore.config import Settings
from filestore.crypto import Keyring
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
    return settings.max_ttl + settings.purge_interval + settings.kek_grace


async def manage_keys(
    keyring: Keyring, metadata: MetadataStore, eraser: Eraser, settings: Settings
) -> KeyReport:
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
    return report
