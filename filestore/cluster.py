"""Joining a cluster whose machines share no disk: getting the ratchet from a
live peer, founding one when there is no cluster yet, and refusing to run on
a ratchet that is not the cluster's.

An instance with no ratchet file asks each peer in ``FILESTORE_JOIN_PEERS``
over the authenticated hand-over (:mod:`filestore.crypto.join`): the request
and answer are bound to the cluster secret and to fresh X25519 keys, so the
plain-HTTP channel between gateways carries nothing a listener can use. If no
peer answers and the database holds no epoch commitment, nobody runs the
cluster yet: the instance founds it — but only if it wins the database's
"first commitment" race, so two instances starting together never found two
ratchets. The loser (or an instance that finds a cluster it cannot reach)
keeps asking its peers for a bounded time, then refuses to start.

Every start and every key step records this instance's commitment for the
current epoch (or compares it with the one stored): a mismatch is a split
brain, and the instance stops before it wraps a key others cannot unwrap.
"""

from __future__ import annotations

import asyncio
import logging
import os
import urllib.error
import urllib.request

from filestore.clock import Clock
from filestore.commitment import check_commitment
from filestore.config import Settings
from filestore.crypto.join import JoinRequest
from filestore.crypto.ratchet import RatchetKeyring, RatchetState
from filestore.crypto.schedule import RatchetKeys
from filestore.errors import AuthError, ConfigError
from filestore.metadata.base import ClusterStore

log = logging.getLogger(__name__)

JOIN_PATH = "/v1/cluster/join"
JOIN_TIMEOUT = 5.0
#: A hand-over answer is 146 bytes; anything much longer is not one.
MAX_ANSWER = 4096


async def open_ratchet(
    settings: Settings, cluster: ClusterStore, clock: Clock, psk: bytes
) -> RatchetKeys:
    """This instance's ratchet, loaded, joined or founded, advanced past
    every epoch due for destruction, and checked against the cluster's.
    ``psk`` is the cluster secret (:func:`load_cluster_secret`)."""
    path = settings.ratchet_path
    try:
        ratchet = await asyncio.to_thread(RatchetKeyring.load, path)
    except FileNotFoundError:
        ratchet = await _obtain(settings, psk, cluster, clock)
    destroyed = await asyncio.to_thread(ratchet.advance, clock.now(), settings.kek_destroy_after)
    keys = RatchetKeys(ratchet, clock, settings.kek_destroy_after)
    keys.note_destroyed(destroyed, clock.now())
    await check_commitment(keys, cluster, clock.now())
    return keys


async def _obtain(
    settings: Settings, psk: bytes, cluster: ClusterStore, clock: Clock
) -> RatchetKeyring:
    path = settings.ratchet_path
    await asyncio.to_thread(path.parent.mkdir, parents=True, exist_ok=True, mode=0o700)
    loop = asyncio.get_running_loop()
    give_up = loop.time() + settings.join_wait
    while True:
        state = await ask_peers(settings.join_peers, psk, clock)
        if state is not None:
            log.info("joined the cluster's key schedule from a peer")
            return await asyncio.to_thread(RatchetKeyring.from_state, path, state)
        founded = await _found(settings, cluster, clock)
        if founded is not None:
            log.info("no cluster key schedule existed: this instance founded one")
            return founded
        if loop.time() >= give_up:
            raise ConfigError(
                "cannot join the cluster's key schedule: no peer in FILESTORE_JOIN_PEERS "
                "answered a hand-over, and the database shows the cluster already exists"
            )
        await asyncio.sleep(1.0)


async def _found(settings: Settings, cluster: ClusterStore, clock: Clock) -> RatchetKeyring | None:
    """Create a ratchet as the cluster's first instance, if the database
    agrees that there is none yet; None if another instance got there first."""
    path = settings.ratchet_path
    candidate_path = path.with_name(path.name + ".candidate")
    now = clock.now()
    try:
        # A candidate from an earlier try whose commitment did get stored
        # (the reply was lost, or the process died before the rename) is
        # the cluster's ratchet: keep it rather than lock ourselves out.
        candidate = await asyncio.to_thread(RatchetKeyring.load, candidate_path)
    except FileNotFoundError:
        candidate = await asyncio.to_thread(
            RatchetKeyring.create, candidate_path, now, settings.kek_rotation
        )
    except ConfigError:
        await asyncio.to_thread(candidate_path.unlink)
        return None
    epoch = candidate.current_epoch(now)
    commitment = candidate.commitment(epoch, now)
    won = await cluster.record_commitment(epoch, commitment, now, founding=True)
    if won is None and await _is_recorded(cluster, candidate, now):
        won = commitment
    if won is None:
        await asyncio.to_thread(candidate_path.unlink)
        return None
    await asyncio.to_thread(os.replace, candidate_path, path)
    return await asyncio.to_thread(RatchetKeyring.load, path)


async def _is_recorded(cluster: ClusterStore, candidate: RatchetKeyring, now: float) -> bool:
    """Whether the newest stored commitment is this candidate's."""
    latest = await cluster.latest_commitment()
    if latest is None or latest[0] < candidate.oldest_epoch:
        return False
    return bool(candidate.commitment(latest[0], now) == latest[1])


async def ask_peers(peers: tuple[str, ...], psk: bytes, clock: Clock) -> RatchetState | None:
    """The ratchet state from the first peer that answers a hand-over, or
    None. Failures are logged by class only: nothing of the exchange.

    One small POST per peer, once at start-up: the standard library's client
    in a thread is enough, and keeps this module (which the scheduler reaches)
    free of the HTTP server's library."""
    for peer in peers:
        request = JoinRequest.new(psk, clock.now())
        try:
            answer = await asyncio.to_thread(_post, peer + JOIN_PATH, request.message)
            return request.open_response(answer)
        except urllib.error.HTTPError as exc:
            log.warning("peer %s refused the hand-over (%d)", peer, exc.code)
        except (OSError, ValueError) as exc:
            log.warning("peer %s did not answer (%s)", peer, type(exc).__name__)
        except AuthError:
            log.warning("peer %s answered a hand-over that does not check out", peer)
    return None


def _post(url: str, body: bytes) -> bytes:
    if not url.startswith(("http://", "https://")):
        raise ValueError("a peer is an http(s) URL")
    headers = {"Content-Type": "application/octet-stream"}
    req = urllib.request.Request(url, data=body, method="POST", headers=headers)  # noqa: S310
    with urllib.request.urlopen(req, timeout=JOIN_TIMEOUT) as resp:  # noqa: S310 - scheme checked
        return bytes(resp.read(MAX_ANSWER + 1))
