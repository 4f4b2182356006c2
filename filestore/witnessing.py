"""The witness process an auditor runs (``filestore audit witness``).

It keeps its own Ed25519 key and its state (the last checkpoint it cosigned
per origin) in a directory of its own, and works in one of two ways:

* **pull** (polling a deployment): fetch ``/v1/audit/checkpoint`` with an
  auditor key, fetch a consistency proof from the size it last cosigned,
  decide (:class:`~filestore.audit.witness.WitnessCore`), write the new state,
  then send the cosigned note back to ``/v1/audit/cosignatures``;
* **push** (the tlog-witness HTTP interface): serve ``POST /add-checkpoint``
  and ``GET /<sha256 of origin>/checkpoint`` for a log that submits itself.

A refused checkpoint (a fork, a rollback, a bad signature) is logged at
ERROR, never cosigned, and leaves the state file as it was. State is written
atomically and fsync'd before any cosignature leaves the process.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import aiohttp
from aiohttp import web

from filestore.audit import AuditVerificationError, peek_checkpoint
from filestore.audit.cosignature import witness_vkey
from filestore.audit.keys import load_verifier
from filestore.audit.witness import (
    LogKey,
    WitnessCore,
    WitnessRefusal,
    dump_state,
    load_state,
    parse_request,
)
from filestore.crypto import load_or_create_signing_key
from filestore.crypto._files import ensure_private_dir, write_private_file
from filestore.errors import ConfigError

__all__ = [
    "COSIGNED",
    "REFUSED",
    "UNREACHABLE",
    "Target",
    "WitnessProcess",
    "log_key",
    "origin_hash",
    "poll_forever",
    "poll_once",
    "push_app",
    "serve_push",
]

log = logging.getLogger("filestore.witness")

KEY_FILE = "witness-key.pem"
STATE_FILE = "state.json"
#: Round outcomes, also ``--once``'s exit codes.
COSIGNED, REFUSED, UNREACHABLE = 0, 1, 3


def log_key(vkey: str, origin: str | None) -> LogKey:
    """A followed log from its vkey (and origin, if it is not the key name:
    a log begun under the legacy identity is signed as ``filestore-audit``)."""
    key, name = load_verifier(vkey)
    if name is None:
        raise ConfigError("a log key for a witness is a vkey (name+keyid+base64), not PEM")
    return LogKey(origin or name, name, key)


class WitnessProcess:
    """The witness's key, state file and decisions, one at a time."""

    def __init__(self, state_dir: Path, name: str, logs: Sequence[LogKey]) -> None:
        ensure_private_dir(state_dir)
        self.state_path = state_dir / STATE_FILE
        key = load_or_create_signing_key(state_dir / KEY_FILE)
        try:
            state = load_state(self.state_path.read_bytes())
        except FileNotFoundError:
            state = {}
        except (ValueError, KeyError, TypeError) as exc:
            raise ConfigError(f"witness state {self.state_path} is unreadable: {exc}") from exc
        self.core = WitnessCore(name, key, logs, state)
        self.lock = asyncio.Lock()

    @property
    def vkey(self) -> str:
        return witness_vkey(self.core.name, self.core.key.public_key())

    async def decide(self, old_size: int, proof: Sequence[bytes], note: str, now: float) -> str:
        """The cosignature line for ``note``, with the new state on disk first;
        WitnessRefusal (logged at ERROR for a fork or rollback) if refused."""
        async with self.lock:  # the check and the write are one step
            try:
                origin, state, line = self.core.add_checkpoint(old_size, proof, note, now)
            except WitnessRefusal as exc:
                serious = exc.kind in ("fork", "rollback", "bad-signature")
                level = logging.ERROR if serious else logging.WARNING
                log.log(level, "refused to cosign: %s", exc.message)
                raise
            states = {**self.core.state, origin: state}
            await asyncio.to_thread(write_private_file, self.state_path, dump_state(states))
            self.core.commit(origin, state)
            log.info("cosigned %s at size %d", origin, state.size)
            return line


# ----------------------------------------------------------------- pull
@dataclass(frozen=True)
class Target:
    """A deployment polled in pull mode."""

    url: str
    token: str


async def _fetch(session: aiohttp.ClientSession, target: Target, path: str) -> str:
    async with session.get(
        target.url + path, headers={"Authorization": f"Bearer {target.token}"}
    ) as resp:
        text = await resp.text()
        if resp.status != 200:
            raise OSError(f"GET {path}: HTTP {resp.status}")
        return text


async def poll_once(
    witness: WitnessProcess, target: Target, clock: Callable[[], float] = time.time
) -> int:
    """One pull round; returns COSIGNED, REFUSED or UNREACHABLE."""
    timeout = aiohttp.ClientTimeout(total=60)
    async with aiohttp.ClientSession(timeout=timeout) as session:
        try:
            note = await _fetch(session, target, "/v1/audit/checkpoint")
            cp = peek_checkpoint(note)
            known = witness.core.known_size(cp.origin)
            proof: list[bytes] = []
            if 0 < known < cp.size:
                data = await _fetch(
                    session, target, f"/v1/audit/consistency?from={known}&to={cp.size}"
                )
                proof = [bytes.fromhex(h) for h in json.loads(data)["proof"]]
        except (TimeoutError, OSError, aiohttp.ClientError, ValueError, KeyError, TypeError) as exc:
            log.warning("cannot fetch the checkpoint from %s: %s", target.url, exc)
            return UNREACHABLE
        except AuditVerificationError as exc:
            log.error("refused to cosign: the checkpoint from %s is malformed: %s", target.url, exc)
            return REFUSED
        try:
            line = await witness.decide(known, proof, note, clock())
        except WitnessRefusal:
            return REFUSED
        try:
            async with session.post(
                target.url + "/v1/audit/cosignatures",
                data=(note + line).encode(),
                headers={
                    "Authorization": f"Bearer {target.token}",
                    "Content-Type": "text/plain; charset=utf-8",
                },
            ) as resp:
                if resp.status != 200:
                    log.warning(
                        "the gateway did not take the cosignature: HTTP %d %s",
                        resp.status,
                        (await resp.text())[:300],
                    )
                    return UNREACHABLE
        except (TimeoutError, OSError, aiohttp.ClientError) as exc:
            log.warning("cannot send the cosignature to %s: %s", target.url, exc)
            return UNREACHABLE
    return COSIGNED


async def poll_forever(
    witness: WitnessProcess, target: Target, interval: float, rounds: int | None = None
) -> int:
    """Poll every ``interval`` seconds (``rounds`` times, or until stopped);
    returns REFUSED if any round refused, else the last round's outcome."""
    worst = COSIGNED
    done = 0
    while rounds is None or done < rounds:
        outcome = await poll_once(witness, target)
        worst = REFUSED if REFUSED in (worst, outcome) else outcome
        done += 1
        if rounds is None or done < rounds:
            await asyncio.sleep(interval)
    return worst


# ----------------------------------------------------------------- push
def origin_hash(origin: str) -> str:
    return hashlib.sha256(origin.encode("utf-8")).hexdigest()


def push_app(witness: WitnessProcess, clock: Callable[[], float] = time.time) -> web.Application:
    """The tlog-witness HTTP interface of ``witness``."""
    routes = web.RouteTableDef()

    @routes.post("/add-checkpoint")
    async def add_checkpoint(request: web.Request) -> web.Response:
        body = await request.content.read(64 * 1024 + 1)
        try:
            if len(body) > 64 * 1024:
                raise WitnessRefusal(400, "malformed", "the request is too large")
            old, proof, note = parse_request(body)
            line = await witness.decide(old, proof, note, clock())
        except WitnessRefusal as exc:
            if exc.status == 409:
                return web.Response(
                    status=409,
                    text=f"{exc.known_size}\n",
                    content_type="text/x.tlog.size",
                )
            return web.Response(status=exc.status, text=exc.message + "\n")
        return web.Response(text=line, content_type="text/plain")

    @routes.get("/{origin_hash}/checkpoint")
    async def checkpoint(request: web.Request) -> web.Response:
        wanted = request.match_info["origin_hash"]
        for origin, state in witness.core.state.items():
            if origin_hash(origin) == wanted:
                return web.Response(text=state.note, content_type="text/plain")
        return web.Response(status=404, text="no checkpoint cosigned for that log\n")

    app = web.Application(client_max_size=64 * 1024 + 1)
    app.add_routes(routes)
    return app


async def serve_push(witness: WitnessProcess, host: str, port: int) -> None:
    runner = web.AppRunner(push_app(witness), access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, host, port)
    await site.start()
    log.info("witness %s listening on %s:%d", witness.core.name, host, port)
    try:
        with contextlib.suppress(asyncio.CancelledError):
            await asyncio.Event().wait()
    finally:
        await runner.cleanup()
