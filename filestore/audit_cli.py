"""``filestore audit …``: export the deletion log and verify exports and
receipts offline.

``verify`` and ``verify-receipt`` need nothing but the file and the public
key — no server, no database — so an auditor runs them on their own machine.
Exit codes: 0 verified, 1 verification failed (the message names the first
bad line and record), 2 usage or unreadable input.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import time
from pathlib import Path

from filestore import auditlog
from filestore.audit import (
    AuditVerificationError,
    load_verifier,
    verifier_key_string,
    verify_export,
    verify_receipt,
)
from filestore.clock import SystemClock, parse_time, rfc3339
from filestore.config import Settings
from filestore.crypto.signing import public_key_pem
from filestore.errors import ConfigError
from filestore.services import open_services


def add_parser(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    audit = sub.add_parser("audit", help="export and verify the deletion log")
    cmds = audit.add_subparsers(dest="audit_command", required=True)
    export = cmds.add_parser("export", help="export the log (signs a fresh checkpoint)")
    export.add_argument("--format", choices=["jsonl", "csv"], default="jsonl")
    export.add_argument("--since", help="RFC 3339 time or Unix seconds (inclusive)")
    export.add_argument("--until", help="RFC 3339 time or Unix seconds (exclusive)")
    export.add_argument(
        "--consistency-from",
        type=int,
        metavar="SIZE",
        help="prove consistency with a checkpoint of this size you kept",
    )
    export.add_argument("-o", "--output", required=True, help="file to write")
    verify = cmds.add_parser("verify", help="verify a JSONL export offline")
    verify.add_argument("export_file")
    verify.add_argument("--public-key", required=True, help="PEM or C2SP vkey file")
    verify.add_argument("--trusted-checkpoint", help="a checkpoint note you kept earlier")
    verify.add_argument(
        "--max-age",
        type=float,
        default=7200.0,
        help="newest checkpoint may be at most this many seconds old",
    )
    verify.add_argument("--now", type=float, help=argparse.SUPPRESS)
    receipt = cmds.add_parser("verify-receipt", help="verify a deletion receipt offline")
    receipt.add_argument("receipt_file")
    receipt.add_argument("--public-key", required=True)
    key = cmds.add_parser("public-key", help="print the log's public key")
    key.add_argument("--format", choices=["pem", "vkey"], default="pem")


def _time(value: str | None) -> float | None:
    if value is None:
        return None
    try:
        return parse_time(value)
    except ValueError as exc:
        raise ConfigError(
            f"{value!r} is not an RFC 3339 time with a zone, or Unix seconds"
        ) from exc


def _read(path: str) -> str:
    try:
        return Path(path).read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"cannot read {path}: {exc}") from exc


async def _export(settings: Settings, args: argparse.Namespace) -> None:
    async with open_services(settings, SystemClock()) as svc:
        stream = auditlog.export(
            svc.metadata,
            svc.signing_key,
            settings.audit_origin,
            svc.clock.now(),
            fmt=args.format,
            since=_time(args.since),
            until=_time(args.until),
            consistency_from=args.consistency_from,
        )
        out = Path(args.output)
        tmp = out.with_name(out.name + ".partial")
        with tmp.open("w", encoding="utf-8", newline="") as fh:
            async for chunk in stream:
                fh.write(chunk)
        tmp.replace(out)
    print(f"wrote {out}")


async def _public_key(settings: Settings, fmt: str) -> None:
    async with open_services(settings, SystemClock()) as svc:
        if fmt == "pem":
            sys.stdout.write(public_key_pem(svc.signing_key).decode())
        else:
            print(verifier_key_string(auditlog.KEY_NAME, svc.signing_key.public_key()))


def run(args: argparse.Namespace, settings_factory: type[Settings]) -> int:
    """Run one audit subcommand; returns the exit code."""
    cmd = args.audit_command
    if cmd in ("verify", "verify-receipt"):
        public_key, key_name = load_verifier(_read(args.public_key))
        try:
            if cmd == "verify":
                trusted = _read(args.trusted_checkpoint) if args.trusted_checkpoint else None
                report = verify_export(
                    _read(args.export_file).splitlines(),
                    public_key,
                    key_name=key_name,
                    trusted_checkpoint=trusted,
                    now=args.now if args.now is not None else time.time(),
                    max_age=args.max_age,
                )
                print(
                    f"OK: {report.records} records (seq {report.first_seq}.."
                    f"{report.last_seq}), {report.checkpoints} checkpoints; newest "
                    f"checkpoint size {report.latest_size} at {rfc3339(report.latest_time)}"
                    + ("; complete log" if report.complete else "; partial export")
                    + ("; consistent with the trusted checkpoint" if report.trusted_checked else "")
                )
            else:
                data = json.loads(_read(args.receipt_file))
                record = verify_receipt(data, public_key, key_name)
                print(
                    f"OK: file {record.file_id} deleted at {rfc3339(record.deleted_at or 0)} "
                    f"(reason {record.reason}), record seq {record.seq} is in the signed log"
                )
        except AuditVerificationError as exc:
            print(f"FAILED: {exc}", file=sys.stderr)
            return 1
        except ValueError as exc:  # malformed JSON receipt
            print(f"FAILED: not a readable receipt ({exc})", file=sys.stderr)
            return 1
        return 0
    settings = settings_factory.load(config_file=args.config)
    if cmd == "export":
        asyncio.run(_export(settings, args))
    else:
        asyncio.run(_public_key(settings, args.format))
    return 0
