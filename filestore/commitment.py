"""The split-brain check of the ratchet key schedule.

Each epoch's commitment (an HMAC under its KEK; it reveals nothing of the key)
goes into the shared database the first time any instance wraps under that
epoch. An instance whose own commitment differs runs a ratchet that is not the
cluster's — it was created instead of joined — and every key it wrapped
would be unreadable to the others, so it must stop. Kept free of aiohttp so
the scheduler can run the check every pass.
"""

from __future__ import annotations

from filestore.crypto.schedule import RatchetKeys
from filestore.errors import ConfigError
from filestore.metadata.base import FileStore


async def check_commitment(keys: RatchetKeys, files: FileStore, now: float) -> None:
    """Record (or compare) the current epoch's commitment; ConfigError on a
    split brain."""
    epoch = keys.ratchet.current_epoch(now)
    ours = keys.ratchet.commitment(epoch, now)
    stored = await files.record_commitment(epoch, ours, now)
    if stored != ours:
        raise ConfigError(
            f"this instance's ratchet ({keys.ratchet.path}) is not the cluster's: epoch {epoch} "
            "has another commitment in the database. Stop it, remove its ratchet file and let "
            "it join from a live peer (FILESTORE_JOIN_PEERS)"
        )
