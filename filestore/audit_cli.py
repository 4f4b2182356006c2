"""``filestore audit …``: export the deletion log and verify exports and
receipts offline.

``verify`` and ``verify-receipt`` need nothing but the file and the public
key — no server, no database — so an auditor runs them on their own machine.
Exit codes (``verify`` and ``verify-receipt``):

====  =====================================================================
0     verified: sound, complete (or ``--allow-partial``), promise kept
1     verification failed: tampered, malformed, forked, stale,
      unsigned, a cosignature that does not verify, or too few witnesses
      (the message names the first bad line and record)
2     usage or unreadable input
3     sound but incomplete: a partial export (cut, time-bounded or not
      from seq 1) without ``--allow-partial``
4     sound, but records break the promise (listed one per line)
====  =====================================================================

A fault outranks a broken promise, which outranks an incomplete log.

``witness`` runs a witness (see :mod:`filestore.witnessing`): with
``--once`` its exit code is 0 cosigned and delivered, 1 refused (a fork, a
rollback, a bad log signature), 2 usage, 3 the gateway could not be reached
or did not take the cosignature.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
import os
import sys
import time
from pathlib import Path
from typing import Any

from filestore import auditlog
from filestore.audit import (
    AuditVerificationError,
    load_verifier,
    peek_checkpoint,
    receipt_note,
    verifier_key_string,
    verify_export,
    verify_receipt,
)
from filestore.audit.cosignature import Witness, parse_witness_key
from filestore.audit.keys import check_key_name
from filestore.audit.promise import PromiseCheck
from filestore.audit.verify import check_witnesses, require_quorum
from filestore.clock import SystemClock, parse_time, rfc3339
from filestore.config import Settings
from filestore.crypto.signing import public_key_pem
from filestore.errors import ConfigError
from filestore.services import open_services
from filestore.witnessing import Target, WitnessProcess, log_key, poll_forever, serve_push


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
    verify.add_argument(
        "--allow-partial",
        action="store_true",
        help="accept an export that does not prove the whole log (exit 0, not 3)",
    )
    verify.add_argument("--now", type=float, help=argparse.SUPPRESS)
    _witness_flags(verify)
    receipt = cmds.add_parser("verify-receipt", help="verify a deletion receipt offline")
    receipt.add_argument("receipt_file")
    receipt.add_argument("--public-key", required=True)
    receipt.add_argument("--file-id", help="the receipt must be for this file")
    receipt.add_argument("--tenant", help="... of this tenant")
    receipt.add_argument("--now", type=float, help=argparse.SUPPRESS)
    _witness_flags(receipt)
    witness = cmds.add_parser(
        "witness", help="run a witness: cosign a deployment's checkpoints if consistent"
    )
    witness.add_argument("--state-dir", required=True, help="the witness's key and state")
    witness.add_argument("--name", required=True, help="the witness's name, e.g. example.org/w1")
    witness.add_argument("--log-key", help="the log's vkey (a string or a file holding it)")
    witness.add_argument(
        "--origin", help="the log's origin, if it is not the vkey's name (a legacy log)"
    )
    witness.add_argument("--url", help="the deployment to poll (pull mode)")
    witness.add_argument(
        "--token-file", help="file holding an auditor API key (default: $FILESTORE_TOKEN)"
    )
    witness.add_argument("--interval", type=float, default=60.0, help="seconds between polls")
    witness.add_argument("--once", action="store_true", help="one round, then exit")
    witness.add_argument(
        "--listen", metavar="HOST:PORT", help="serve tlog-witness add-checkpoint (push mode)"
    )
    witness.add_argument(
        "--print-vkey", action="store_true", help="print the witness's vkey (making its key)"
    )
    key = cmds.add_parser("public-key", help="print the log's public key")
    key.add_argument("--format", choices=["pem", "vkey"], default="pem")


def _witness_flags(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--witness",
        action="append",
        default=[],
        metavar="VKEY",
        help="a witness's vkey (a string or a file holding it); repeatable",
    )
    parser.add_argument(
        "--min-witnesses",
        type=int,
        metavar="K",
        help="the newest checkpoint needs cosignatures by K of them (default: all given)",
    )


def _witnesses(args: argparse.Namespace) -> tuple[list[Witness], int]:
    found: dict[str, Witness] = {}
    for value in args.witness:
        try:
            witness = parse_witness_key(_value(value))
        except AuditVerificationError as exc:
            raise ConfigError(f"--witness {value!r}: {exc}") from None
        if witness.name in found:
            raise ConfigError(f"two witnesses are named {witness.name!r}")
        found[witness.name] = witness
    k = len(found) if args.min_witnesses is None else args.min_witnesses
    if not 0 <= k <= len(found):
        raise ConfigError(f"--min-witnesses must be between 0 and the {len(found)} --witness given")
    return list(found.values()), k


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
            ident = await auditlog.identity(svc.metadata, svc.signing_key, settings.audit_origin)
            print(verifier_key_string(ident.key_name, svc.signing_key.public_key()))


EXIT_OK, EXIT_FAILED, EXIT_USAGE, EXIT_INCOMPLETE, EXIT_PROMISE = 0, 1, 2, 3, 4


def _verify(args: argparse.Namespace, public_key: Any, key_name: str | None) -> int:
    trusted = _read(args.trusted_checkpoint) if args.trusted_checkpoint else None
    witnesses, k = _witnesses(args)
    report = verify_export(
        _read(args.export_file).splitlines(),
        public_key,
        key_name=key_name,
        trusted_checkpoint=trusted,
        now=args.now if args.now is not None else time.time(),
        max_age=args.max_age,
        witnesses=witnesses,
        min_witnesses=k,
    )
    scope = (
        f"complete from seq 1 to the newest checkpoint (size {report.latest_size})"
        if report.complete
        else "partial: it does not prove the whole log"
    )
    print(
        f"signatures and chain OK: {report.records} records (seq {report.first_seq}.."
        f"{report.last_seq}), {report.checkpoints} checkpoints; newest checkpoint size "
        f"{report.latest_size} signed at {rfc3339(report.latest_time)}; {scope}"
        + ("; consistent with the trusted checkpoint" if report.trusted_checked else "")
        + (
            f"; cosigned by {len(report.witnessed_by)} witness(es): "
            + ", ".join(report.witnessed_by)
            if witnesses
            else ""
        )
    )
    for violation in report.violations:
        print(f"PROMISE BROKEN: {violation}", file=sys.stderr)
    if report.violation_count > len(report.violations):
        more = report.violation_count - len(report.violations)
        print(f"PROMISE BROKEN: ... and {more} more", file=sys.stderr)
    if report.violation_count:
        print(f"FAILED: {report.violation_count} records break the promise", file=sys.stderr)
        return EXIT_PROMISE
    if not report.complete and not args.allow_partial:
        print(
            "INCOMPLETE: the export does not prove the whole log; export it in full, "
            "or pass --allow-partial to accept a partial one",
            file=sys.stderr,
        )
        return EXIT_INCOMPLETE
    return EXIT_OK


def _verify_receipt(args: argparse.Namespace, public_key: Any, key_name: str | None) -> int:
    witnesses, k = _witnesses(args)
    # A tlog-proof, or a JSON receipt (filestore-audit-receipt/1) saved before.
    text = _read(args.receipt_file)
    record = verify_receipt(text, public_key, key_name, file_id=args.file_id, tenant=args.tenant)
    note = receipt_note(text)
    now = args.now if args.now is not None else time.time()
    names = check_witnesses(note, witnesses, now)
    require_quorum(peek_checkpoint(note).size, names, k)
    print(
        f"signature and inclusion OK: file {record.file_id} deleted at "
        f"{rfc3339(record.deleted_at or 0)} (reason {record.reason}), record seq "
        f"{record.seq} is in the signed log"
        + (f"; cosigned by {len(names)} witness(es): " + ", ".join(names) if witnesses else "")
    )
    broken = PromiseCheck().check(record)
    for reason in broken:
        print(f"PROMISE BROKEN: seq {record.seq}: {reason}", file=sys.stderr)
    return EXIT_PROMISE if broken else EXIT_OK


def _witness(args: argparse.Namespace) -> int:
    logging.basicConfig(
        level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    try:
        check_key_name(args.name)
        logs = [log_key(_value(args.log_key), args.origin)] if args.log_key else []
    except (AuditVerificationError, ValueError) as exc:
        raise ConfigError(f"witness: {exc}") from None
    process = WitnessProcess(Path(args.state_dir), args.name, logs)
    if args.print_vkey:
        print(process.vkey)
        return EXIT_OK
    if not args.log_key:
        raise ConfigError("--log-key is required to witness a log")
    if args.listen:
        host, _, port = args.listen.rpartition(":")
        if not host or not port.isdigit():
            raise ConfigError("--listen takes HOST:PORT")
        with contextlib.suppress(KeyboardInterrupt):
            asyncio.run(serve_push(process, host, int(port)))
        return EXIT_OK
    if not args.url:
        raise ConfigError("--url (pull mode) or --listen (push mode) is required")
    token = (
        _read(args.token_file).strip() if args.token_file else os.environ.get("FILESTORE_TOKEN", "")
    )
    if not token:
        raise ConfigError("an auditor API key is needed: --token-file or $FILESTORE_TOKEN")
    if args.interval <= 0:
        raise ConfigError("--interval must be positive")
    target = Target(args.url.rstrip("/"), token)
    try:
        return asyncio.run(poll_forever(process, target, args.interval, 1 if args.once else None))
    except KeyboardInterrupt:  # a witness polling forever is stopped this way
        return EXIT_OK


def _value(value: str) -> str:
    """A flag's value, or the text of the file it names."""
    return _read(value).strip() if Path(value).is_file() else value


def run(args: argparse.Namespace, settings_factory: type[Settings]) -> int:
    """Run one audit subcommand; returns the exit code."""
    cmd = args.audit_command
    if cmd in ("verify", "verify-receipt"):
        public_key, key_name = load_verifier(_read(args.public_key))
        try:
            if cmd == "verify":
                return _verify(args, public_key, key_name)
            return _verify_receipt(args, public_key, key_name)
        except AuditVerificationError as exc:
            print(f"FAILED: {exc}", file=sys.stderr)
            return EXIT_FAILED
        except ValueError as exc:  # malformed JSON receipt
            print(f"FAILED: not a readable receipt ({exc})", file=sys.stderr)
            return EXIT_FAILED
    if cmd == "witness":
        return _witness(args)
    settings = settings_factory.load(config_file=args.config)
    if cmd == "export":
        asyncio.run(_export(settings, args))
    else:
        asyncio.run(_public_key(settings, args.format))
    return EXIT_OK
