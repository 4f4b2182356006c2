"""``filestore status-link``: a short-lived, one-time sign-in link to the
operator status page, for someone with a shell on the server.

The link names an operator API key by id (``--key-id``, else the newest live
operator key) and is signed with the deployment's link-signing secret
(``filestore.sessions``), so it works on any instance that shares it. Opening
it sets the page's session cookie and moves on to ``/status``; revoking the
key ends that session. The URL is printed alone on the last line of stdout.
"""

from __future__ import annotations

import argparse
import asyncio

from filestore.clock import SystemClock
from filestore.config import Settings, parse_duration
from filestore.crypto.links import load_or_create_link_key
from filestore.errors import ConfigError
from filestore.metadata.base import Role
from filestore.services import open_metadata
from filestore.sessions import LINK_TTL_DEFAULT, LINK_TTL_MAX, SessionSigner

COMMAND = "status-link"


def add_parser(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    link = sub.add_parser(
        COMMAND, help="print a one-time sign-in link to the operator status page (/status)"
    )
    link.add_argument(
        "--ttl",
        default=f"{LINK_TTL_DEFAULT // 60}m",
        help=f"how long the link may be used (default 15m, at most {LINK_TTL_MAX // 60}m)",
    )
    link.add_argument("--key-id", help="the operator key to sign in as (default: the newest)")
    link.add_argument(
        "--base-url",
        help="the gateway's address as a browser reaches it (default http://HOST:PORT)",
    )


def _base_url(settings: Settings, given: str | None) -> str:
    if given:
        if not given.startswith(("http://", "https://")):
            raise ConfigError("--base-url must start with http:// or https://")
        return given.rstrip("/")
    host = settings.host
    if host in ("0.0.0.0", "::", ""):  # noqa: S104 - naming the wildcard, not binding it
        host = "127.0.0.1"
    elif ":" in host:
        host = f"[{host}]"
    return f"http://{host}:{settings.port}"


async def run(settings: Settings, args: argparse.Namespace) -> None:
    try:
        ttl = parse_duration(args.ttl)
    except ValueError as exc:
        raise ConfigError(f"--ttl {args.ttl!r} is not a duration") from exc
    if not 0 < ttl <= LINK_TTL_MAX:
        raise ConfigError(f"--ttl must be more than 0 and at most {LINK_TTL_MAX // 60}m")
    base = _base_url(settings, args.base_url)
    path = settings.link_key_path
    if not await asyncio.to_thread(path.exists):
        raise ConfigError(f"no link-signing key at {path}: start the gateway once, or set it")
    signer = SessionSigner(await asyncio.to_thread(load_or_create_link_key, path))
    store = await open_metadata(settings)
    try:
        live = [
            k
            for k in await store.api_keys.all()
            if k.role == Role.OPERATOR and k.revoked_at is None
        ]
    finally:
        await store.close()
    if args.key_id:
        chosen = next((k for k in live if k.key_id == args.key_id), None)
        if chosen is None:
            raise ConfigError(f"no live operator key with id {args.key_id!r}")
    elif live:
        chosen = max(live, key=lambda k: (k.created_at, k.key_id))
    else:
        raise ConfigError(
            "no live operator key: create one with "
            "`filestore keys create --role operator --tenant NAME`"
        )
    token = signer.link_token(chosen.key_id, SystemClock().now(), max(1, round(ttl)))
    print(
        f"Sign-in link for operator key {chosen.key_id} ({chosen.tenant}); "
        f"it works once, for {ttl / 60:g} minutes:"
    )
    print(f"{base}/status/link?token={token}")
