"""``filestore upload / download / info / delete / link / receipt / status``:
the client commands, for people and for scripts.

They are registered on the ``filestore`` command by :func:`add_parsers` and
run by :func:`run`; ``python -m filestore.client`` runs them alone (without
loading the server). The server URL and API key come from ``--url`` /
``--token``, ``FILESTORE_URL`` / ``FILESTORE_TOKEN`` or the client config
file, in that order (:mod:`filestore.client.config`). The key is never
printed, logged or put in a URL.

Output is for people unless ``--json`` is given: then stdout carries exactly
one JSON document (also when the command fails: ``{"error": {...}}``).
Progress bars go to stderr, and only for large transfers to a terminal.

Exit codes, one per kind of failure (:data:`EXIT_CODES`):

==  ===========  ==========================================================
0   OK           done
1   FAILED       anything else: a server fault (500), an unusable answer,
                 a local file that cannot be read or written
2   USAGE        a bad command line, no API key, an unusable config file
                 (argparse's own code, as for every ``filestore`` command)
3   AUTH         401/403: the key is missing, unknown, revoked, or its role
                 may not do this
4   NOT_FOUND    404/410: no such file, expired, deleted, used up, or a
                 signed link that no longer verifies
5   BAD_REQUEST  400/416 and other refusals of the request's shape
6   TOO_LARGE    413: over the server's size limit
7   INTEGRITY    a checksum that does not match (422, or the client's own
                 check), a receipt that fails verification
8   NOT_READY    409: no receipt yet (the file is not deleted, or its
                 deletion is not yet under a signed checkpoint)
75  UNAVAILABLE  503 or no connection, still after the retries; 408
                 (EX_TEMPFAIL, as the server commands use)
130 INTERRUPTED  Ctrl-C
==  ===========  ==========================================================
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import sys
from collections.abc import AsyncIterator, Callable, Sequence
from datetime import UTC, datetime
from enum import IntEnum
from pathlib import Path
from typing import Any, TextIO

import aiofiles
import aiofiles.os
from tqdm import tqdm

from filestore.audit import AuditVerificationError, load_verifier
from filestore.client import human
from filestore.client.aio import CHUNK, AsyncClient
from filestore.client.config import DEFAULT_URL, ConfigProblem, Connection, resolve
from filestore.client.errors import (
    AuthError,
    BadRequestError,
    ClientError,
    ConflictError,
    IntegrityError,
    NotFoundError,
    ServerError,
    TooLargeError,
    UnavailableError,
)
from filestore.client.models import FileInfo
from filestore.client.retry import RetryPolicy

__all__ = [
    "COMMANDS",
    "EXIT_CODES",
    "PROGRESS_THRESHOLD",
    "ExitCode",
    "add_parsers",
    "exit_code_for",
    "main",
    "run",
]


class ExitCode(IntEnum):
    OK = 0
    FAILED = 1
    USAGE = 2
    AUTH = 3
    NOT_FOUND = 4
    BAD_REQUEST = 5
    TOO_LARGE = 6
    INTEGRITY = 7
    NOT_READY = 8
    UNAVAILABLE = 75
    INTERRUPTED = 130


#: The one table from error classes to exit codes; the first match wins.
EXIT_CODES: tuple[tuple[type[ClientError], ExitCode], ...] = (
    (AuthError, ExitCode.AUTH),
    (NotFoundError, ExitCode.NOT_FOUND),
    (ConflictError, ExitCode.NOT_READY),
    (BadRequestError, ExitCode.BAD_REQUEST),
    (TooLargeError, ExitCode.TOO_LARGE),
    (IntegrityError, ExitCode.INTEGRITY),
    (UnavailableError, ExitCode.UNAVAILABLE),
    (ServerError, ExitCode.FAILED),
)

COMMANDS = frozenset({"upload", "download", "info", "delete", "link", "receipt", "status"})

#: Transfers at least this large get a progress bar (on a terminal).
PROGRESS_THRESHOLD = 8 << 20

log = logging.getLogger("filestore.client")


def exit_code_for(exc: ClientError) -> ExitCode:
    for cls, code in EXIT_CODES:
        if isinstance(exc, cls):
            return code
    return ExitCode.FAILED


class UsageError(Exception):
    """A command line that cannot run; exit 2."""


# ------------------------------------------------------------------ parsers
def _common() -> argparse.ArgumentParser:
    common = argparse.ArgumentParser(add_help=False)
    group = common.add_argument_group("connection")
    group.add_argument(
        "--url", help=f"server URL (else $FILESTORE_URL, the config file, or {DEFAULT_URL})"
    )
    group.add_argument(
        "--token",
        help="API key (else $FILESTORE_TOKEN or the config file; prefer those: "
        "a flag shows in the process list)",
    )
    group.add_argument(
        "--retries",
        type=int,
        default=3,
        metavar="N",
        help="retry idempotent calls N times on 503 or a lost connection (default 3)",
    )
    common.add_argument("--json", action="store_true", help="print one JSON document")
    common.add_argument("-v", "--verbose", action="store_true", help="say when calls are retried")
    return common


def _transfer() -> argparse.ArgumentParser:
    transfer = argparse.ArgumentParser(add_help=False)
    transfer.add_argument("--no-progress", action="store_true", help="never show a progress bar")
    return transfer


# Servers no longer issue ids that begin with "-", but older ones did, and an
# argument parser reads such a word as an option.
_ID_HELP = "a file id (one that begins with '-' goes after '--')"


def add_parsers(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add the client commands to the ``filestore`` command's subparsers."""
    common, transfer = _common(), _transfer()
    up = sub.add_parser(
        "upload",
        parents=[common, transfer],
        help="upload files (client)",
        description="Upload files; prints each one's id. '-' reads standard input.",
    )
    up.add_argument("files", nargs="+", metavar="FILE")
    up.add_argument("--ttl", help="lifetime, e.g. 90s, 15m, 2h (server default otherwise)")
    up.add_argument("--max-downloads", type=int, metavar="N", help="delete after N downloads")
    up.add_argument("--name", help="the stored name (one file only; default: the file's name)")
    up.add_argument("--type", dest="content_type", metavar="MIME", help="content type")
    up.add_argument(
        "--sha256", metavar="HEX", help="expected checksum (one file only): refused if different"
    )
    up.add_argument("-q", "--quiet", action="store_true", help="print only the ids")

    down = sub.add_parser(
        "download",
        parents=[common, transfer],
        help="download a file by id or signed link (client)",
        description="Download a file, atomically: nothing is left at PATH unless it "
        "arrived whole (and, for a whole file, matched its SHA-256).",
    )
    down.add_argument("target", metavar="ID|LINK", help=_ID_HELP)
    down.add_argument(
        "-o", "--output", metavar="PATH", help="file or directory to write, '-' for stdout"
    )
    down.add_argument("--range", metavar="A-B", help="bytes A to B (inclusive), A-, or -N")
    down.add_argument("--force", action="store_true", help="replace an existing file")

    info = sub.add_parser(
        "info", parents=[common], help="a file's metadata (client)", description="Show a file."
    )
    info.add_argument("target", metavar="ID|LINK", help=_ID_HELP)

    delete = sub.add_parser(
        "delete",
        parents=[common],
        help="delete files now (client)",
        description="Delete files now: keys erased, blobs removed, receipts to follow.",
    )
    delete.add_argument("ids", nargs="+", metavar="ID", help=_ID_HELP)

    link = sub.add_parser(
        "link",
        parents=[common],
        help="a signed download link (client)",
        description="Print a signed URL that downloads the file without a key.",
    )
    link.add_argument("id", metavar="ID", help=_ID_HELP)
    link.add_argument("--ttl", help="how long it is valid (server default otherwise)")
    link.add_argument("-q", "--quiet", action="store_true", help="print only the URL")

    receipt = sub.add_parser(
        "receipt",
        parents=[common],
        help="a deleted file's deletion receipt (client)",
        description="Fetch the deletion receipt of a deleted file, and verify it.",
    )
    receipt.add_argument("id", metavar="ID", help=_ID_HELP)
    receipt.add_argument("--verify", action="store_true", help="verify it (needs --public-key)")
    receipt.add_argument(
        "--public-key", metavar="PATH", help="the audit log's public key you pinned (PEM or vkey)"
    )
    receipt.add_argument(
        "-o", "--output", metavar="PATH", help="save the receipt (a .tlog-proof text file)"
    )

    sub.add_parser(
        "status",
        parents=[common],
        help="the purge status (operator)",
        description="Show the purge scheduler's status (an operator key).",
    )


# ------------------------------------------------------------------ output
class Output:
    """Where a command's words go: people's lines, or one JSON document."""

    def __init__(self, as_json: bool, out: TextIO, err: TextIO) -> None:
        self.as_json = as_json
        self.out = out
        self.err = err
        self.document: dict[str, Any] | None = None

    def say(self, text: str = "") -> None:
        if not self.as_json:
            print(text, file=self.out)

    def note(self, text: str) -> None:
        print(f"filestore: {text}", file=self.err)

    def emit(self, document: dict[str, Any]) -> None:
        self.document = document

    def finish(self, error: dict[str, Any] | None = None) -> None:
        if not self.as_json:
            return
        document = dict(self.document or {})
        if error is not None:
            document["error"] = error
        json.dump(document, self.out, indent=2, ensure_ascii=False)
        self.out.write("\n")


class Bar:
    """A tqdm bar on stderr that appears only for a transfer of at least
    :data:`PROGRESS_THRESHOLD` bytes, and only when stderr is a terminal."""

    def __init__(self, description: str, enabled: bool, stream: TextIO) -> None:
        self.description = description
        self.enabled = enabled and _isatty(stream)
        self.stream = stream
        self.bar: tqdm[Any] | None = None
        self.seen = 0

    def __call__(self, done: int, total: int | None) -> None:
        if not self.enabled:
            return
        if self.bar is None:
            if max(done, total or 0) < PROGRESS_THRESHOLD:
                return
            self.bar = tqdm(
                total=total,
                desc=self.description,
                unit="B",
                unit_scale=True,
                unit_divisor=1024,
                file=self.stream,
                leave=False,
                dynamic_ncols=True,
            )
        self.bar.update(done - self.seen)
        self.seen = done

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
            self.bar = None


def _isatty(stream: TextIO) -> bool:
    try:
        return stream.isatty()
    except (AttributeError, ValueError):
        return False


def _label(info: FileInfo) -> str:
    return info.filename or info.id


# ---------------------------------------------------------------- commands
async def _stdin_chunks() -> AsyncIterator[bytes]:
    stdin: Any = sys.stdin.buffer  # a BufferedReader: read1 returns what has arrived
    while chunk := await asyncio.to_thread(stdin.read1, CHUNK):
        yield chunk


async def _upload(fs: AsyncClient, args: argparse.Namespace, out: Output) -> None:
    if len(args.files) > 1 and (args.name or args.sha256):
        raise UsageError("--name and --sha256 apply to one file at a time")
    if args.files.count("-") > 1:
        raise UsageError("standard input can be uploaded once")
    done: list[dict[str, Any]] = []
    out.emit({"files": done})
    for name in args.files:
        bar = Bar(args.name or name, not args.no_progress, out.err)
        try:
            if name == "-":
                source: Any = _stdin_chunks()
            else:
                source = Path(name)
                if not await aiofiles.os.path.isfile(source):
                    raise UsageError(f"{name} is not a file")
            info = await fs.upload(
                source,
                filename=args.name,
                content_type=args.content_type,
                ttl=args.ttl,
                max_downloads=args.max_downloads,
                sha256=args.sha256,
                progress=bar,
            )
        finally:
            bar.close()
        done.append(info.to_json())
        if args.quiet:
            if not out.as_json:
                print(info.id, file=out.out)
        else:
            out.say(
                f"{info.id}  {name if name != '-' else _label(info)}  {human.size(info.size)}"
                f"  expires {human.moment(info.expires_at)}"
            )


def _parse_range(text: str | None) -> tuple[int, int | None]:
    if not text:
        return 0, None
    first, sep, last = text.partition("-")
    try:
        if not sep:
            raise ValueError(text)
        if not first:
            return -int(last), None
        start = int(first)
        if not last:
            return start, None
        end = int(last)
        if start < 0 or end < start:
            raise ValueError(text)
        return start, end - start + 1
    except ValueError:
        raise UsageError(f"--range {text!r}: give A-B (inclusive), A- or -N") from None


def _safe_name(name: str | None, fallback: str) -> str:
    """A server-given file name used as a local one: its last part only,
    never a path, never hidden-by-accident '.' or '..'."""
    if not name:
        return fallback
    base = name.replace("\\", "/").rsplit("/", 1)[-1].strip()
    if base in ("", ".", "..") or any(ord(c) < 0x20 for c in base):
        return fallback
    return base


async def _download(fs: AsyncClient, args: argparse.Namespace, out: Output) -> None:
    offset, length = _parse_range(args.range)
    if args.output == "-":
        if out.as_json:
            raise UsageError("--json and -o - both want standard output")
        async with fs.open(args.target, offset=offset, length=length) as stream:
            sink = sys.stdout.buffer
            async for chunk in stream:
                await asyncio.to_thread(sink.write, chunk)
            await asyncio.to_thread(sink.flush)
        return
    file_id = args.target.rsplit("/", 1)[-1].split("?", 1)[0]
    if args.output is None or await aiofiles.os.path.isdir(args.output):
        # The server's name for it is known only from the download's headers.
        info = await fs.info(args.target)
        folder = Path(args.output) if args.output else Path()
        dest = folder / _safe_name(info.filename, file_id)
        overwrite = args.force
    else:
        dest = Path(args.output)
        overwrite = True
    bar = Bar(dest.name, not args.no_progress, out.err)
    try:
        result = await fs.download(
            args.target, dest, offset=offset, length=length, overwrite=overwrite, progress=bar
        )
    except FileExistsError:
        raise UsageError(f"{dest} exists; use -o PATH or --force to replace it") from None
    finally:
        bar.close()
    out.emit(result.to_json())
    check = "SHA-256 verified" if result.verified else "a range: no checksum to verify"
    out.say(f"saved {dest} ({human.size(result.length)}, {check})")


async def _info(fs: AsyncClient, args: argparse.Namespace, out: Output) -> None:
    info = await fs.info(args.target)
    out.emit(info.to_json())
    rows = [
        ("id", info.id),
        ("name", info.filename or "-"),
        ("size", f"{human.size(info.size)} ({info.size} bytes)"),
        ("type", info.content_type or "-"),
        ("sha256", info.sha256),
        ("created", human.moment(info.created_at)),
        ("expires", human.moment(info.expires_at)),
    ]
    for key, value in rows:
        out.say(f"{key:<9}{value}")


async def _delete(fs: AsyncClient, args: argparse.Namespace, out: Output) -> None:
    done: list[dict[str, Any]] = []
    out.emit({"deletions": done})
    for file_id in args.ids:
        result = await fs.delete(file_id)
        done.append(result.to_json())
        if result.already_gone:
            out.say(f"{file_id} was already gone (deleted or expired)")
        elif result.completed:
            out.say(f"deleted {file_id}")
        else:
            out.say(f"{file_id}: another worker is deleting it; it finishes shortly")


async def _link(fs: AsyncClient, args: argparse.Namespace, out: Output) -> None:
    link = await fs.link(args.id, ttl=args.ttl)
    out.emit(link.to_json())
    if args.quiet:
        if not out.as_json:
            print(link.url, file=out.out)
        return
    out.say(link.url)
    out.say(f"valid until {human.moment(link.expires_at)}; anyone with it can read the file")


async def _receipt(fs: AsyncClient, args: argparse.Namespace, out: Output) -> None:
    pinned: bytes | None = None
    if args.verify or args.public_key:
        if not args.public_key:
            raise UsageError("--verify needs --public-key PATH (the audit key you pinned)")
        try:
            pinned = await asyncio.to_thread(Path(args.public_key).read_bytes)
            load_verifier(pinned)
        except OSError as exc:
            raise UsageError(f"cannot read {args.public_key}: {exc.strerror or exc}") from None
        except AuditVerificationError as exc:
            raise UsageError(f"{args.public_key}: {exc}") from None
    receipt = await fs.receipt(args.id, public_key=pinned)
    if args.output:
        async with aiofiles.open(args.output, "w", encoding="utf-8") as fh:
            await fh.write(receipt.text)
    out.emit(receipt.to_json())
    record = receipt.record
    out.say(f"deletion receipt for {receipt.file_id}")
    if record.deleted_at is not None:
        deleted = datetime.fromtimestamp(record.deleted_at, UTC)
        out.say(f"  deleted   {human.moment(deleted)}, reason {record.reason}")
    out.say(
        f"  record    #{record.seq} of the deletion log, under a signed checkpoint "
        f"of {receipt.tree_size}"
    )
    if receipt.verified:
        out.say(f"  verified  signature and inclusion proof, against {args.public_key}")
    else:
        out.say("  verified  no (add --verify --public-key PATH)")
    if args.output:
        out.say(f"  saved     {args.output} (filestore audit verify-receipt checks it offline)")


async def _status(fs: AsyncClient, args: argparse.Namespace, out: Output) -> None:
    status = await fs.purge_status()
    out.emit(status.to_json())
    health = ", ".join(f"{k} {v}" for k, v in status.health.items()) or "unknown"
    out.say(f"health      {health}")
    running = "running" if status.scheduler_running else "not running here"
    every = f", every {human.duration(status.interval_seconds)}" if status.interval_seconds else ""
    nxt = f"; next pass {human.moment(status.next_pass_at)}" if status.next_pass_at else ""
    out.say(f"scheduler   {running}{every}{nxt}")
    if status.last_pass_finished_at is not None:
        out.say(
            f"last pass   {human.moment(status.last_pass_finished_at)}: purged "
            f"{status.last_pass_purged}, {status.last_pass_failed} failed"
        )
    else:
        out.say("last pass   none yet in this process")
    backlog = "unknown" if status.backlog is None else str(status.backlog)
    out.say(
        f"backlog     {backlog} due; most overdue {human.duration(status.most_overdue_seconds)}"
    )
    failing = "unknown" if status.failing_files is None else str(status.failing_files)
    out.say(f"failing     {failing} files")
    live = "unknown" if status.live_files is None else str(status.live_files)
    out.say(f"live files  {live}; purged since start {status.purged_total}")


_HANDLERS: dict[str, Callable[[AsyncClient, argparse.Namespace, Output], Any]] = {
    "upload": _upload,
    "download": _download,
    "info": _info,
    "delete": _delete,
    "link": _link,
    "receipt": _receipt,
    "status": _status,
}


def _needs_token(args: argparse.Namespace) -> bool:
    target = getattr(args, "target", None)
    return not (isinstance(target, str) and target.startswith(("http://", "https://")))


async def _run(args: argparse.Namespace, conn: Connection, out: Output) -> None:
    if args.retries < 0:
        raise UsageError("--retries must be 0 or more")
    retry = RetryPolicy(attempts=args.retries + 1)
    try:
        client = AsyncClient(conn.url, conn.token, retry=retry)
    except ValueError as exc:
        raise UsageError(f"{exc} (the URL is from {conn.url_from})") from None
    async with client as fs:
        await _HANDLERS[args.command](fs, args, out)


def run(
    args: argparse.Namespace,
    *,
    stdout: TextIO | None = None,
    stderr: TextIO | None = None,
) -> int:
    """Run a parsed client command; returns its exit code."""
    out = Output(args.json, stdout or sys.stdout, stderr or sys.stderr)
    if args.verbose:
        handler = logging.StreamHandler(out.err)
        handler.setFormatter(logging.Formatter("filestore: %(message)s"))
        log.addHandler(handler)
        log.setLevel(logging.INFO)
    try:
        try:
            conn = resolve(args.url, args.token)
        except ConfigProblem as exc:
            raise UsageError(str(exc)) from None
        for warning in conn.warnings:
            out.note(f"warning: {warning}")
        if conn.token is None and _needs_token(args):
            raise UsageError(
                'no API key: pass --token, set FILESTORE_TOKEN, or put token = "fs_…" in '
                "~/.config/filestore/client.toml"
            )
        asyncio.run(_run(args, conn, out))
    except UsageError as exc:
        out.note(str(exc))
        out.finish({"class": "UsageError", "exit_code": int(ExitCode.USAGE), "message": str(exc)})
        return ExitCode.USAGE
    except ClientError as exc:
        code = exit_code_for(exc)
        out.note(str(exc))
        out.finish(
            {
                "class": type(exc).__name__,
                "exit_code": int(code),
                "message": str(exc),
                **exc.problem(),
            }
        )
        return code
    except OSError as exc:
        where = f"{exc.filename}: " if exc.filename else ""
        out.note(f"{where}{exc.strerror or exc}")
        out.finish({"class": "OSError", "exit_code": int(ExitCode.FAILED), "message": str(exc)})
        return ExitCode.FAILED
    except KeyboardInterrupt:
        out.note("interrupted")
        return ExitCode.INTERRUPTED
    finally:
        if args.verbose:
            log.handlers.clear()
    out.finish()
    return ExitCode.OK


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m filestore.client COMMAND …``: the client commands alone."""
    parser = argparse.ArgumentParser(prog="filestore", description="The filestore client commands.")
    add_parsers(parser.add_subparsers(dest="command", required=True))
    return run(parser.parse_args(argv))
