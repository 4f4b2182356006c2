"""The split-brain check: every instance sharing a database must hold the
same KEKs.

Each KEK's commitment (an HMAC under the KEK; it reveals nothing of the key)
goes into the shared database the first time any instance wraps under it. An
instance whose own commitment differs holds other KEKs under the same id — a
ratchet created instead of joined, or a keyring file of its own on a second
machine — and every key it wrapped would be unreadable to the others, so it
must stop. Checked at start and at every key step; kept free of aiohttp so
the scheduler can run it.
"""

from __future__ import annotations

from filestore.crypto.schedule import KekSource, RatchetKeys
from filestore.errors import KeyNotFound, SplitBrain
from filestore.metadata.base import ClusterStore


async def check_commitment(keys: KekSource, cluster: ClusterStore, now: float) -> None:
    """Record (or compare) the commitment of the KEK new keys are wrapped
    under; ConfigError on a split brain."""
    kek_id = keys.active_id
    ours = keys.commitment(kek_id)
    # Before seeding a new KEK's commitment, agree with the newest one on
    # record, so an instance on the wrong keys cannot be the first to seed
    # the next epoch and lock the right ones out.
    latest = await cluster.latest_commitment()
    if latest is not None and latest[0] != kek_id:
        try:
            agrees = keys.commitment(latest[0]) == latest[1]
        except KeyNotFound:
            agrees = True  # destroyed here already: nothing left to compare
        if not agrees:
            _refuse(keys, latest[0])
    stored = await cluster.record_commitment(kek_id, ours, now)
    if stored != ours:
        _refuse(keys, kek_id)


def _refuse(keys: KekSource, kek_id: int) -> None:
    if isinstance(keys, RatchetKeys):
        raise SplitBrain(
            f"this instance's ratchet ({keys.ratchet.path}) is not the cluster's: epoch {kek_id} "
            "has another commitment in the database. Stop it, remove its ratchet file and let "
            "it join from a live peer (FILESTORE_JOIN_PEERS)"
        )
    raise SplitBrain(
        f"this instance's keyring is not the one the other instances use: KEK {kek_id} has "
        "another commitment in the database. Processes on one host share one keyring file "
        "(FILESTORE_KEYRING_FILE); machines that share no disk need FILESTORE_KEY_SCHEDULE=ratchet"
    )
