"""The ``filestore`` command: serve the gateway and manage API keys.

Errors map to exit codes in one place (:func:`main`): 2 for a usage or
configuration error, 75 (EX_TEMPFAIL) when a dependency is down, 1 otherwise.
Messages go to stderr; the one thing a script needs (a new key) is printed
alone on the last line of stdout. The client commands (upload, download,
info, delete, link, receipt, status) live in :mod:`filestore.client.cli`,
with their own exit codes, listed there.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import gc
import logging
import os
import signal
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

from aiohttp import web

from filestore import __version__, audit_cli, logs, loops, status_link, workers
from filestore.api.access_log import AccessLogger
from filestore.api.app import create_app
from filestore.api.connections import GuardedSite
from filestore.auth import create_key
from filestore.client import cli as client_cli
from filestore.clock import SystemClock
from filestore.config import Settings
from filestore.errors import ConfigError, FilestoreError, MetadataUnavailable, Unavailable
from filestore.hardening import forbid_core_dumps
from filestore.metadata.base import Role
from filestore.metadata.database import schema_revision
from filestore.metadata.migrate import head_revision
from filestore.services import ensure_first_key, open_metadata, open_services
from scheduler.runner import PurgeScheduler

log = logging.getLogger("filestore")

#: Bytes of request body aiohttp may buffer per connection before pausing.
READ_BUFSIZE = 1 << 20


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="filestore",
        description="Temporary file store: encrypted at rest, deleted within 24 hours.",
    )
    parser.add_argument("--version", action="version", version=f"filestore {__version__}")
    parser.add_argument(
        "--config", metavar="FILE", help="TOML settings file (else $FILESTORE_CONFIG)"
    )
    sub = parser.add_subparsers(dest="command", required=True)

    serve = sub.add_parser("serve", help="run the HTTP gateway")
    serve.add_argument("--host", help="bind address (FILESTORE_HOST)")
    serve.add_argument("--port", type=int, help="port (FILESTORE_PORT)")
    serve.add_argument("--data-dir", help="data directory (FILESTORE_DATA_DIR)")
    serve.add_argument(
        "--no-scheduler",
        action="store_true",
        help="do not run the purge scheduler here (run `filestore scheduler` or cron)",
    )
    serve.add_argument(
        "--workers",
        type=workers.worker_count,
        metavar="N",
        help="gateway processes sharing the port with SO_REUSEPORT, one event loop each "
        "(FILESTORE_WORKERS; default 1: this process serves alone)",
    )
    # Set by the supervisor of --workers on the serve it starts per worker.
    serve.add_argument("--worker", help=argparse.SUPPRESS)
    serve.add_argument("--ready-fd", type=int, help=argparse.SUPPRESS)
    serve.add_argument("--supervisor", type=int, help=argparse.SUPPRESS)

    sub.add_parser("purge", help="run one purge pass and exit (for cron)")
    sub.add_parser("scheduler", help="run the purge scheduler without the HTTP API")
    status_link.add_parser(sub)

    audit_cli.add_parser(sub)
    client_cli.add_parsers(sub)

    database = sub.add_parser("db", help="the metadata database's schema")
    db_sub = database.add_subparsers(dest="db_command", required=True)
    db_sub.add_parser("upgrade", help="apply every pending migration (also done at each start)")
    db_sub.add_parser("current", help="print the schema revision and the newest one known")

    keys = sub.add_parser("keys", help="manage API keys")
    keys_sub = keys.add_subparsers(dest="keys_command", required=True)
    create = keys_sub.add_parser("create", help="create a key; prints it once")
    create.add_argument("--role", required=True, choices=[r.value for r in Role])
    create.add_argument("--tenant", required=True)
    create.add_argument("--label", default="")
    keys_sub.add_parser("list", help="list keys (ids, never secrets)")
    revoke = keys_sub.add_parser("revoke", help="revoke a key by its id")
    revoke.add_argument("key_id")
    return parser


def _settings(args: argparse.Namespace) -> Settings:
    overrides = {}
    for name in ("host", "port", "data_dir", "workers"):
        value = getattr(args, name, None)
        if value is not None:
            overrides[name] = value
    return Settings.load(config_file=args.config, **overrides)


def _stop_on_signals() -> asyncio.Event:
    """An event set by SIGINT or SIGTERM: a clean stop at any point."""
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    return stop


@dataclass(frozen=True)
class _Worker:
    """What the supervisor of ``--workers`` tells the serve it starts."""

    name: str
    ready_fd: int


def _freeze_startup_heap() -> None:
    """Take what start-up made (modules, the app, clients: ~150,000 objects)
    out of the cyclic collector's sight.

    They live as long as the process, yet every full collection walks them:
    measured here at 140-160 ms each, a pause that stalls every request in
    flight and sets the tail latency of small uploads. Collect once first so
    no garbage is kept for good.
    """
    gc.collect()
    gc.freeze()


#: How long a thread may keep the GIL while another waits for it (Python's
#: default: 5 ms). The loop shares the GIL with the storage, database and
#: hashing threads, and a thread coming back from a system call (an fsync, a
#: socket send) waits out the holder's turn before it may go on.
SWITCH_INTERVAL = 0.0005


def _shorten_gil_turns() -> None:
    """Let a thread that finished a system call have the GIL back sooner.

    Each small upload is a chain of short steps on three threads (receive
    and seal on the loop, store on a storage thread, record on the database
    thread), and at 5 ms turns the hand-overs between them, not the work,
    set its latency. Measured in four alternated pairs of ``python -m bench
    --only filestore-sqlite,filestore-pg,aiohttp-durable --workloads 4KiB``:
    server CPU per SQLite upload fell by 5-18 % in every pair, and SQLite
    req/s rose in every pair; the ratios against the baseline rose in two
    pairs and were lost in the baseline's swings in the other two. 1 MiB and
    64 MiB transfers did not move.
    """
    sys.setswitchinterval(SWITCH_INTERVAL)


async def _serve(
    settings: Settings, run_scheduler: bool = True, worker: _Worker | None = None
) -> None:
    # Handlers first: a SIGTERM at any point after start-up is a clean stop.
    stop = _stop_on_signals()
    log.debug("serving on the %s event loop (setting: %s)", loops.running(), settings.event_loop)
    instance = None if worker is None else worker.name
    async with open_services(settings, SystemClock(), instance) as services:
        # A worker's supervisor made the first key before starting any.
        first_key = None if worker is not None else await ensure_first_key(services)
        if first_key is not None:
            print("Created a first client key for tenant 'default'; it is shown only once.")
            print(f"API key: {first_key}", flush=True)
        scheduler = PurgeScheduler(services)
        app = create_app(settings, services=services, scheduler=scheduler)
        runner = web.AppRunner(
            app,
            access_log=logging.getLogger("filestore.access"),
            access_log_class=AccessLogger,
            # A deeper request buffer: fewer pause/resume cycles of the socket
            # while a large upload streams in (bounded per connection).
            read_bufsize=READ_BUFSIZE,
            keepalive_timeout=settings.keepalive_timeout,
        )
        await runner.setup()
        # Before listening: the one-time collection (~150 ms) then delays no
        # connection.
        _freeze_startup_heap()
        _shorten_gil_turns()
        # A TCP site whose connections must finish each request head within
        # HEADER_TIMEOUT (filestore.api.connections).
        site = GuardedSite(
            runner,
            settings.host,
            settings.port,
            header_timeout=settings.header_timeout,
            reuse_port=worker is not None,
        )
        await site.start()
        port = site.port
        if run_scheduler:
            scheduler.start()
        else:
            # The purge runs elsewhere, but KEKs held here must still die on
            # time: the key step alone keeps its own timer.
            scheduler.start(keys_only=True)
        if worker is None:
            print(
                f"filestore {__version__} listening on http://{settings.host}:{port}"
                f" ({loops.running()})",
                flush=True,
            )
        else:
            # The supervisor says "listening" once every worker does.
            workers.announce_ready(worker.ready_fd, worker.name)
        try:
            await stop.wait()
        finally:
            log.info("shutting down")
            # Stop taking requests, then let a pass in flight finish.
            await runner.cleanup()
            await scheduler.stop()


async def _purge(settings: Settings) -> int:
    """One pass (purge, sweeps, key epochs, checkpoint); exit 1 if any file
    failed so a CronJob shows it."""
    async with open_services(settings, SystemClock()) as services:
        report = await PurgeScheduler(services).run_pass()
    print(
        f"purged {report.purged} of {report.claimed} claimed, {report.failed} failed"
        + (
            f" ({', '.join(f'{k}: {v}' for k, v in report.failures.items())})"
            if report.failed
            else ""
        )
    )
    if report.error:
        raise MetadataUnavailable("the purge pass could not run")
    return 1 if report.failed else 0


async def _scheduler_only(settings: Settings) -> None:
    """The purge scheduler without the HTTP API, until SIGTERM."""
    stop = _stop_on_signals()
    async with open_services(settings, SystemClock()) as services:
        scheduler = PurgeScheduler(services)
        scheduler.start()
        print(
            f"filestore {__version__} scheduler running every {settings.purge_interval:g}s",
            flush=True,
        )
        try:
            await stop.wait()
        finally:
            await scheduler.stop()


async def _db(settings: Settings, args: argparse.Namespace) -> int:
    sqlite_path = settings.database_path if settings.database_dialect == "sqlite" else Path()
    before = await schema_revision(settings.database_url, sqlite_path)
    head = head_revision()
    if args.db_command == "current":
        print(f"{settings.database_dialect} schema at revision {before or '(none)'}; newest {head}")
        return 0 if before == head else 1
    await asyncio.to_thread(settings.data_dir.mkdir, parents=True, exist_ok=True, mode=0o700)
    store = await open_metadata(settings)
    await store.close()
    after = await schema_revision(settings.database_url, sqlite_path)
    if before == after:
        print(f"{settings.database_dialect} schema already at revision {after}")
    else:
        print(f"{settings.database_dialect} schema upgraded from {before or '(none)'} to {after}")
    return 0


async def _keys(settings: Settings, args: argparse.Namespace) -> None:
    await asyncio.to_thread(settings.data_dir.mkdir, parents=True, exist_ok=True, mode=0o700)
    store = await open_metadata(settings)
    try:
        if args.keys_command == "create":
            key, record = await create_key(
                store, Role(args.role), args.tenant, SystemClock().now(), label=args.label
            )
            print(f"Created {record.role} key {record.key_id} for tenant {record.tenant}.")
            print("Store it now; it cannot be shown again.")
            print(key)
        elif args.keys_command == "list":
            print(f"{'KEY ID':<14}{'ROLE':<10}{'TENANT':<20}{'CREATED':<22}{'STATE':<9}LABEL")
            for rec in await store.api_keys.all():
                created = datetime.fromtimestamp(rec.created_at, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
                state = "revoked" if rec.revoked_at is not None else "active"
                print(
                    f"{rec.key_id:<14}{rec.role:<10}{rec.tenant:<20}{created:<22}{state:<9}"
                    f"{rec.label}"
                )
        elif args.keys_command == "revoke":
            if not await store.api_keys.revoke(args.key_id, SystemClock().now()):
                raise ConfigError(f"no active key with id {args.key_id!r}")
            print(f"Revoked key {args.key_id}.")
    finally:
        await store.close()


def main(argv: Sequence[str] | None = None) -> int:
    # Everything filestore creates (database, WAL, keys, blobs) is private,
    # and no key it holds may reach a core dump.
    os.umask(0o077)
    forbid_core_dumps()
    args = _parser().parse_args(argv)
    try:
        if args.command == "audit":
            return audit_cli.run(args, Settings)
        if args.command in client_cli.COMMANDS:
            # The client's own exit codes (filestore/client/cli.py).
            return client_cli.run(args)
        settings = _settings(args)
        worker = getattr(args, "worker", None)
        if worker is not None:
            workers.die_with_parent(args.supervisor)
        # Text for a terminal, or one JSON object per line (filestore.logs),
        # a worker's records stamped with its name.
        logs.configure(
            settings.log_level,
            settings.log_format,
            sys.stderr,
            fields=None if worker is None else {"worker": worker},
        )
        if args.command == "serve" and worker is not None:
            with contextlib.suppress(KeyboardInterrupt):
                loops.run(
                    settings.event_loop,
                    _serve(settings, not args.no_scheduler, _Worker(worker, args.ready_fd)),
                )
        elif args.command == "serve" and settings.workers > 1:
            return workers.run(
                settings,
                settings.workers,
                run_scheduler=not args.no_scheduler,
                config_file=args.config,
            )
        elif args.command == "serve":
            with contextlib.suppress(KeyboardInterrupt):
                loops.run(settings.event_loop, _serve(settings, not args.no_scheduler))
        elif args.command == "purge":
            return asyncio.run(_purge(settings))
        elif args.command == "scheduler":
            with contextlib.suppress(KeyboardInterrupt):
                asyncio.run(_scheduler_only(settings))
        elif args.command == "keys":
            asyncio.run(_keys(settings, args))
        elif args.command == "db":
            return asyncio.run(_db(settings, args))
        elif args.command == status_link.COMMAND:
            asyncio.run(status_link.run(settings, args))
    except ConfigError as exc:
        print(f"filestore: {exc}", file=sys.stderr)
        return 2
    except Unavailable as exc:
        print(f"filestore: {exc}; try again later", file=sys.stderr)
        return 75
    except FilestoreError as exc:
        print(f"filestore: {exc}", file=sys.stderr)
        return 1
    except OSError as exc:
        print(f"filestore: {exc.strerror or exc}", file=sys.stderr)
        return 1
    return 0
