"""Hostile uploads: forms, file names, body framing, sizes, TTLs (issue 9).

Every case is a request a careless or malicious client could send to
``POST /v1/files``. Each must be answered with a clear 4xx
``application/problem+json`` (never a 5xx, never a hang) and leave nothing
behind: no row in ``files`` or ``file_keys``, no blob, no part file in the
storage directory's ``tmp/``, no file in the process's temporary directory
(see :mod:`tests.support.hostile`). The ids say what each case is. One
gateway per backend serves the module (SQLite, then a real PostgreSQL), with
a size limit of :data:`LIMIT` and a short read timeout.

What other suites already prove is not repeated here:
``test_api_files.py`` (truncated forms cut after a part boundary, inside the
boundary, in the next part or in the file's bytes; a form without a file; the
first bad options), ``test_api_fuzz.py`` (random damage; requests the HTTP
parser refuses: Content-Length with chunked, a bad first chunk size, a
non-numeric Content-Length; Content-Encoding) and ``test_api_faults.py``
(slow and vanishing clients, a Content-Length or a chunked body over the
limit).

One known limit shows here (docs/operations.md, "Known limits"): a request
aiohttp's HTTP parser refuses before any handler runs gets aiohttp's own
plain-text 400. Those cases say so (``parser=True``) and are held to "a 400,
and nothing left". A framing error in the middle of a chunked body is found
by that parser too, but aiohttp's C parser does not fail the body the
handler is reading: the upload ends at the read timeout, with a 408 problem
and nothing left (these cases run with a short ``read_timeout``).
"""

from __future__ import annotations

import gzip
import hashlib
import json
import os
import urllib.parse
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
import pytest_asyncio
from aiohttp.multipart import content_disposition_filename, parse_content_disposition

from filestore import ids
from tests.support.gateway import Gateway
from tests.support.hostile import (
    Answer,
    Inventory,
    check_problem,
    connection,
    eventually,
    exchange,
    inventory,
    module_gateway,
    read_answer,
    request_head,
    scratch_tempdir,
)

pytestmark = pytest.mark.asyncio(loop_scope="module")

#: The size limit of the module's gateway.
LIMIT = 64 * 1024
BOUNDARY = "hostile-7c1e"
FORM = f"multipart/form-data; boundary={BOUNDARY}"


@pytest.fixture(scope="module")
def temp_dir(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    with scratch_tempdir(tmp_path_factory.mktemp("process-tmp")) as path:
        yield path


@pytest_asyncio.fixture(scope="module", loop_scope="module", params=["sqlite", "postgresql"])
async def gateway(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory, temp_dir: Path
) -> AsyncIterator[Gateway]:
    """The module's gateway on one backend: a small size limit, a short read
    timeout for the bodies that stop, and batches of 16 KiB, so that a body
    cut after its first 16 KiB was being streamed (a row and a part file)
    rather than held for the short path of a file that fits one batch."""
    root = tmp_path_factory.mktemp("hostile-input")
    async with module_gateway(
        request, root, max_file_size=LIMIT, read_timeout=0.5, batch_size=16384
    ) as gw:
        yield gw


@pytest_asyncio.fixture(loop_scope="module")
async def before(gateway: Gateway, temp_dir: Path) -> Inventory:
    """The inventory before the case: what it must leave as it found."""
    return await inventory(gateway, temp_dir)


async def assert_nothing_left(gw: Gateway, temp: Path, before: Inventory) -> None:
    """Nothing new, at once: the handler cleans up before it answers."""
    assert await inventory(gw, temp) == before


async def assert_eventually_nothing_left(gw: Gateway, temp: Path, before: Inventory) -> None:
    """Nothing new, once the handler is done: for answers that are not the
    handler's (the HTTP parser's), or a connection closed unanswered."""

    async def clean() -> bool:
        return await inventory(gw, temp) == before

    await eventually(clean, "nothing left")


async def upload_raw(
    gw: Gateway,
    body: bytes,
    *,
    target: str = "/v1/files",
    headers: list[tuple[str, str]] | None = None,
) -> Answer:
    """POST ``body`` with a Content-Length, over a raw connection (header
    bytes exactly as given: ``\\udcXX`` stands for a raw byte)."""
    head = [
        ("Authorization", f"Bearer {await gw.key()}"),
        *(headers or [("Content-Type", "application/octet-stream")]),
        ("Content-Length", str(len(body))),
    ]
    answer = await exchange(gw, request_head("POST", target, head) + body)
    assert answer is not None, "the server closed the connection without an answer"
    return answer


# ------------------------------------------------------------------- forms
def part(headers: str | bytes, data: bytes = b"field value") -> bytes:
    raw = headers.encode() if isinstance(headers, str) else headers
    return f"--{BOUNDARY}\r\n".encode() + raw + b"\r\n\r\n" + data + b"\r\n"


def field(name: str) -> bytes:
    return part(f'Content-Disposition: form-data; name="{name}"', name.encode())


def file_part(filename: str = "a.bin", data: bytes = b"file bytes") -> bytes:
    return part(f'Content-Disposition: form-data; name="file"; filename="{filename}"', data)


CLOSE = f"--{BOUNDARY}--\r\n".encode()


def nested(depth: int) -> bytes:
    """A file inside ``depth`` levels of multipart/mixed inside the form."""
    inner = b'Content-Disposition: form-data; name="file"; filename="deep.bin"\r\n\r\ndeep'
    for level in range(depth, 0, -1):
        inner = (
            f"Content-Type: multipart/mixed; boundary=inner{level}\r\n\r\n--inner{level}\r\n"
        ).encode() + (inner + f"\r\n--inner{level}--".encode())
    return f"--{BOUNDARY}\r\n".encode() + inner + b"\r\n" + CLOSE


def with_boundary(boundary: str) -> tuple[str, bytes]:
    body = (
        f'--{boundary}\r\nContent-Disposition: form-data; name="file"; filename="a"\r\n\r\n'
        f"data\r\n--{boundary}--\r\n"
    ).encode()
    return f"multipart/form-data; boundary={boundary}", body


NUL_DISPOSITION = b'Content-Disposition: form-data; name="file"; filename="a\x00b"'
MULTIPART_CASES: dict[str, tuple[str, bytes]] = {
    # The other truncations are in test_api_files.py.
    "truncated-in-part-headers": (
        FORM,
        f'--{BOUNDARY}\r\nContent-Disposition: form-data; name="file"; filen'.encode(),
    ),
    "nested-mixed-holding-the-file": (FORM, field("note") + nested(1)),
    "nested-mixed-after-the-file": (FORM, file_part() + nested(1)),
    "nested-200-deep": (FORM, nested(200)),
    "300-fields-before-the-file": (
        FORM,
        b"".join(field(f"f{i}") for i in range(300)) + file_part() + CLOSE,
    ),
    "300-fields-after-the-file": (
        FORM,
        file_part() + b"".join(field(f"f{i}") for i in range(300)) + CLOSE,
    ),
    "parts-without-a-filename": (
        FORM,
        field("note")
        + part(
            'Content-Disposition: form-data; name="file"\r\nContent-Type: application/octet-stream',
            os.urandom(100),
        )
        + CLOSE,
    ),
    "empty-filename": (FORM, file_part(filename="") + CLOSE),
    "two-file-parts": (FORM, file_part("a.bin") + file_part("b.bin") + CLOSE),
    "two-dispositions-in-the-file-part": (
        FORM,
        part(
            'Content-Disposition: form-data; name="file"; filename="a.bin"\r\n'
            'Content-Disposition: form-data; name="file"; filename="b.bin"'
        )
        + CLOSE,
    ),
    "nul-in-part-header": (FORM, part(NUL_DISPOSITION) + CLOSE),
    "nul-in-a-later-part-header": (FORM, file_part() + part(NUL_DISPOSITION) + CLOSE),
    "part-header-line-9000-bytes": (
        FORM,
        part('Content-Disposition: form-data; name="file"; filename="a"\r\nX-Pad: ' + "p" * 9000)
        + CLOSE,
    ),
    "200-part-headers": (
        FORM,
        part(
            "".join(f"X-H{i}: v\r\n" for i in range(200))
            + 'Content-Disposition: form-data; name="file"; filename="a"'
        )
        + CLOSE,
    ),
    "boundary-missing": ("multipart/form-data", file_part() + CLOSE),
    "boundary-empty": ("multipart/form-data; boundary=", file_part() + CLOSE),
    "boundary-71-chars": with_boundary("b" * 71),
    "boundary-5000-chars": with_boundary("b" * 5000),
    "boundary-not-the-one-in-the-body": (
        "multipart/form-data; boundary=other",
        file_part() + CLOSE,
    ),
}


@pytest.mark.parametrize(
    ("content_type", "body"), MULTIPART_CASES.values(), ids=MULTIPART_CASES.keys()
)
async def test_hostile_multipart(
    gateway: Gateway, temp_dir: Path, before: Inventory, content_type: str, body: bytes
) -> None:
    answer = await upload_raw(gateway, body, headers=[("Content-Type", content_type)])
    check_problem(answer.status, answer.headers, answer.body, 400)
    await assert_nothing_left(gateway, temp_dir, before)


@pytest.mark.parametrize(
    ("content_type", "body", "size"),
    [
        (FORM, file_part(data=b"") + CLOSE, 0),
        (*with_boundary("b" * 70), 4),
        (
            FORM,
            b"".join(field(f"f{i}") for i in range(32))
            + file_part(data=b"x" * 9)
            + b"".join(field(f"g{i}") for i in range(32))
            + CLOSE,
            9,
        ),
    ],
    ids=["empty-file-part", "boundary-70-chars", "32-fields-either-side"],
)
async def test_multipart_edges_that_are_valid(
    gateway: Gateway, content_type: str, body: bytes, size: int
) -> None:
    """Where the refusals above stop: an empty file is a file (as a raw
    empty body is), RFC 2046 allows a boundary of 70 characters, and a form
    may carry up to 32 other fields before and after the file."""
    answer = await upload_raw(gateway, body, headers=[("Content-Type", content_type)])
    assert answer.status == 201, answer.body
    meta = json.loads(answer.body)
    assert meta["size"] == size
    got = await gateway.get(meta["id"])
    assert got.status == 200 and len(await got.read()) == size


# -------------------------------------------------------------- file names
def percent(name: bytes) -> str:
    return urllib.parse.quote_from_bytes(name, safe="")


def quoted(name: bytes) -> str:
    """``name`` as a quoted-string, raw bytes kept (``\\udcXX``)."""
    text = name.decode("utf-8", "surrogateescape")
    return '"' + text.replace("\\", "\\\\").replace('"', '\\"') + '"'


def name_request(source: str, name: bytes) -> tuple[str, list[tuple[str, str]], bytes]:
    """Target, headers and body of an upload that names the file ``name``
    through ``source``."""
    raw = [("Content-Type", "application/octet-stream")]
    data = b"named file"
    if source == "query":
        return f"/v1/files?filename={percent(name)}", raw, data
    if source == "header":
        return (
            "/v1/files",
            [*raw, ("Content-Disposition", f"attachment; filename={quoted(name)}")],
            data,
        )
    if source == "header-ext":
        value = f"attachment; filename*=UTF-8''{percent(name)}"
        return "/v1/files", [*raw, ("Content-Disposition", value)], data
    form = [("Content-Type", FORM)]
    if source == "form":
        disposition = f'form-data; name="file"; filename={quoted(name)}'
    else:
        assert source == "form-ext"
        disposition = f"form-data; name=\"file\"; filename*=UTF-8''{percent(name)}"
    body = part(f"Content-Disposition: {disposition}".encode("utf-8", "surrogateescape"), data)
    return "/v1/files", form, body + CLOSE


FILENAME_CASES: dict[str, tuple[str, bytes]] = {
    "slash-query": ("query", b"../etc/passwd"),
    "slash-form": ("form", b"../../etc/passwd"),
    "slash-header-ext": ("header-ext", b"a/b"),
    "backslash-query": ("query", b"..\\..\\boot.ini"),
    "backslash-form": ("form", b"C:\\Windows\\x.exe"),
    "backslash-header": ("header", b"a\\b"),
    "nul-query": ("query", b"a\x00b"),
    "nul-form-ext": ("form-ext", b"a\x00b"),
    "bell-header-ext": ("header-ext", b"a\x07b"),
    "escape-sequence-form-ext": ("form-ext", b"\x1b[31mred"),
    "del-query": ("query", b"a\x7fb"),
    "tab-form": ("form", b"a\tb"),
    "crlf-query": ("query", b"a\r\nSet-Cookie: x=1"),
    "crlf-header-ext": ("header-ext", b"a\r\nX-Injected: 1"),
    "crlf-form-ext": ("form-ext", b"a\r\nX-Injected: 1"),
    "lf-query": ("query", b"a\nb"),
    "c1-nel-query": ("query", "a\u0085b".encode()),
    "c1-csi-form": ("form", "a\u009bb".encode()),
    "invalid-utf8-query": ("query", b"\xff\xfe.txt"),
    "invalid-utf8-header": ("header", b"a\xff\xfe.txt"),
    "invalid-utf8-form": ("form", b"a\xffb"),
    "invalid-utf8-header-ext": ("header-ext", b"\xff.txt"),
    "encoded-surrogate-query": ("query", b"\xed\xa0\x80.txt"),
    "encoded-surrogate-form-ext": ("form-ext", b"\xed\xa0\x80.txt"),
    "256-bytes-query": ("query", b"x" * 256),
    "258-bytes-of-86-chars-form-ext": ("form-ext", "\u65e5".encode() * 86),
    "1000-bytes-header": ("header", b"y" * 1000),
    "dot-dot-header": ("header", b".."),
    "dot-form": ("form", b"."),
    "empty-query": ("query", b""),
}


@pytest.mark.parametrize(("source", "name"), FILENAME_CASES.values(), ids=FILENAME_CASES.keys())
async def test_hostile_filename(
    gateway: Gateway, temp_dir: Path, before: Inventory, source: str, name: bytes
) -> None:
    """A file name is a label, never a path or a header (the rules in
    ``filestore.api.uploads.validate_filename``): refused, whichever way it
    is sent, rather than silently changed."""
    target, headers, body = name_request(source, name)
    answer = await upload_raw(gateway, body, target=target, headers=headers)
    check_problem(answer.status, answer.headers, answer.body, 400, where=repr(name))
    await assert_nothing_left(gateway, temp_dir, before)


async def test_two_content_disposition_headers_are_refused(
    gateway: Gateway, temp_dir: Path, before: Inventory
) -> None:
    answer = await upload_raw(
        gateway,
        b"data",
        headers=[
            ("Content-Disposition", 'attachment; filename="a.txt"'),
            ("Content-Disposition", 'attachment; filename="b.txt"'),
        ],
    )
    check_problem(answer.status, answer.headers, answer.body, 400)
    await assert_nothing_left(gateway, temp_dir, before)


@dataclass(frozen=True)
class Named:
    source: str
    sent: bytes
    stored: str


ACCEPTED_NAMES = {
    "quote-and-semicolon": Named("query", b'a"; filename="evil.exe', 'a"; filename="evil.exe'),
    "percent-crlf-literal": Named("query", b"a%0D%0AX-Evil: 1", "a%0D%0AX-Evil: 1"),
    "line-separator": Named("query", "a\u2028b".encode(), "a\u2028b"),
    "bidi-override": Named("header-ext", "invoice\u202egpj.exe".encode(), "invoice\u202egpj.exe"),
    "fullwidth-solidus": Named("form-ext", "a\uff0fb".encode(), "a\uff0fb"),
    "encoded-word": Named(
        "header", b"=?utf-8?b?Li4vZXRjL3Bhc3N3ZA==?=", "=?utf-8?b?Li4vZXRjL3Bhc3N3ZA==?="
    ),
    # A quoted-string's backslash escapes the next character (RFC 9110
    # §5.6.4): what old browsers sent as a Windows path arrives without its
    # separators.
    "quoted-pairs": Named("form-raw", b'"C:\\x\\y.txt"', "C:xy.txt"),
}


@pytest.mark.parametrize("case", ACCEPTED_NAMES.values(), ids=ACCEPTED_NAMES.keys())
async def test_accepted_names_cannot_inject_headers(gateway: Gateway, case: Named) -> None:
    """Names that are labels (no separator, no control character) but look
    like trouble are stored exactly as they arrived, and a download's
    Content-Disposition carries them without forging a header or a second
    parameter: one ASCII line, the fallback quoted with no quote or
    backslash inside, the name itself only in ``filename*``."""
    if case.source == "form-raw":
        disposition = b'Content-Disposition: form-data; name="file"; filename=' + case.sent
        target, headers, body = "/v1/files", [("Content-Type", FORM)], part(disposition) + CLOSE
    else:
        target, headers, body = name_request(case.source, case.sent)
    answer = await upload_raw(gateway, body, target=target, headers=headers)
    assert answer.status == 201, answer.body
    meta = json.loads(answer.body)
    assert meta["filename"] == case.stored
    key = await gateway.key()
    for method in ("GET", "HEAD"):
        head = request_head(method, f"/v1/files/{meta['id']}", [("Authorization", f"Bearer {key}")])
        got = await exchange(gateway, head, head=method == "HEAD")
        assert got is not None and got.status == 200
        raw_lines = got.raw_head.split(b"\r\n")
        dispositions = [
            line for line in raw_lines if line.lower().startswith(b"content-disposition:")
        ]
        assert len(dispositions) == 1, raw_lines
        value = got.headers.getall("Content-Disposition")[0]
        assert value.isascii() and value.isprintable(), value
        names = {line.split(b":")[0].lower() for line in raw_lines[1:] if line}
        assert not names & {b"x-evil", b"set-cookie", b"x-injected"}, names
        kind, params = parse_content_disposition(value)
        assert kind == "attachment"
        assert set(params) == {"filename", "filename*"}, params
        assert content_disposition_filename(params, "filename") == case.stored
        assert not set(params["filename"]) & set('"\\%'), params["filename"]


# ---------------------------------------------------------- body framing
def upload_start(key: str, extra: list[tuple[str, str]], *, version: str = "1.1") -> bytes:
    return request_head(
        "POST",
        "/v1/files",
        [("Authorization", f"Bearer {key}"), ("Content-Type", "application/octet-stream"), *extra],
        version=version,
    )


CHUNKED = [("Transfer-Encoding", "chunked")]
GOOD_CHUNKS = b"3\r\nabc\r\n0\r\n\r\n"


@dataclass(frozen=True)
class Framing:
    headers: list[tuple[str, str]]
    body: bytes
    #: The HTTP parser refuses it before any handler (aiohttp's plain 400).
    parser: bool = False
    version: str = "1.1"


FRAMING_CASES = {
    # Transfer-Encoding with Content-Length (also test_api_fuzz.py).
    "te-identity-chunked-with-cl": Framing(
        [("Transfer-Encoding", "identity, chunked"), ("Content-Length", "3")], GOOD_CHUNKS, True
    ),
    "cl-in-the-chunked-trailer": Framing(
        CHUNKED, b"3\r\nabc\r\n0\r\nContent-Length: 99\r\n\r\n", True
    ),
    "te-gzip-chunked": Framing([("Transfer-Encoding", "gzip, chunked")], GOOD_CHUNKS),
    "te-chunked-not-last": Framing([("Transfer-Encoding", "chunked, gzip")], GOOD_CHUNKS, True),
    "te-unknown-coding": Framing([("Transfer-Encoding", "xchunked")], GOOD_CHUNKS, True),
    "te-twice": Framing(CHUNKED + CHUNKED, GOOD_CHUNKS, True),
    "te-in-http-1.0": Framing(CHUNKED, GOOD_CHUNKS, version="1.0"),
    "te-folded-onto-two-lines": Framing([("Transfer-Encoding", "\r\n chunked")], GOOD_CHUNKS, True),
    "cl-twice": Framing([("Content-Length", "3"), ("Content-Length", "3")], b"abc", True),
    "cl-list": Framing([("Content-Length", "3, 3")], b"abc", True),
    "cl-signed": Framing([("Content-Length", "+3")], b"abc", True),
    "cl-negative": Framing([("Content-Length", "-1")], b"abc", True),
    "cl-hex": Framing([("Content-Length", "0x3")], b"abc", True),
    "cl-overflow": Framing([("Content-Length", "9" * 30)], b"abc", True),
    "chunk-size-negative": Framing(CHUNKED, b"-3\r\nabc\r\n0\r\n\r\n", True),
    "chunk-size-overflow": Framing(CHUNKED, b"f" * 24 + b"\r\nabc\r\n0\r\n\r\n", True),
    "chunk-size-hex-prefix": Framing(CHUNKED, b"0x3\r\nabc\r\n0\r\n\r\n", True),
    "chunk-extension-garbage": Framing(CHUNKED, b"3;\x01\x02=\r\nabc\r\n0\r\n\r\n", True),
    "chunk-missing-crlf": Framing(CHUNKED, b"3\r\nabcXX0\r\n\r\n", True),
}


@pytest.mark.parametrize("case", FRAMING_CASES.values(), ids=FRAMING_CASES.keys())
async def test_hostile_framing(
    gateway: Gateway, temp_dir: Path, before: Inventory, case: Framing
) -> None:
    """Framing that is wrong, ambiguous (a request-smuggling shape) or not
    decoded here: refused, before any byte is stored."""
    key = await gateway.key()
    raw = upload_start(key, case.headers, version=case.version) + case.body
    answer = await exchange(gateway, raw)
    assert answer is not None, "closed without an answer"
    if case.parser:
        # The documented limit: aiohttp's own answer, not problem+json.
        assert answer.status == 400, (answer.status, answer.body)
    else:
        check_problem(answer.status, answer.headers, answer.body, 400)
    await assert_eventually_nothing_left(gateway, temp_dir, before)


async def _upload_begun(gw: Gateway, temp: Path) -> bool:
    now = await inventory(gw, temp)
    return "uploading" in now.files.values() and bool(now.parts)


MID_BODY = {
    "bad-chunk-size": b"zz\r\nabc\r\n",
    "chunk-missing-crlf": b"3\r\nabcXX",
    "chunk-extension-garbage": b"3;\x01\r\nabc\r\n",
}


@pytest.mark.parametrize("damage", MID_BODY.values(), ids=MID_BODY.keys())
async def test_framing_broken_mid_body(
    gateway: Gateway, temp_dir: Path, before: Inventory, damage: bytes
) -> None:
    """Good chunks first (the upload is under way: a row and a part file
    exist), then broken framing: a 4xx problem, and the partial upload gone.
    (aiohttp's parser keeps the error to itself, so the read timeout ends
    the upload: a 408.)"""
    key = await gateway.key()
    async with connection(gateway) as (reader, writer):
        writer.write(upload_start(key, CHUNKED) + b"4000\r\n" + os.urandom(0x4000) + b"\r\n")
        await writer.drain()
        await eventually(lambda: _upload_begun(gateway, temp_dir), "the upload to begin")
        writer.write(damage)
        await writer.drain()
        answer = await read_answer(reader)
    assert answer is not None, "closed without an answer"
    check_problem(answer.status, answer.headers, answer.body)
    await assert_eventually_nothing_left(gateway, temp_dir, before)


@pytest.mark.parametrize("framing", ["chunked", "content-length"])
async def test_body_ended_early_by_a_half_close(
    gateway: Gateway, temp_dir: Path, before: Inventory, framing: str
) -> None:
    """A client that sends part of the body and shuts its sending side (a
    lying Content-Length longer than the body, or chunks without the last
    one): whatever the answer, if any, it is not a success, and the partial
    upload is gone. (A close or reset: test_api_faults.py.)"""
    key = await gateway.key()
    extra = CHUNKED if framing == "chunked" else [("Content-Length", str(LIMIT - 1))]
    data = os.urandom(30_000)
    body = b"%x\r\n" % len(data) + data + b"\r\n" if framing == "chunked" else data
    async with connection(gateway) as (reader, writer):
        writer.write(upload_start(key, extra) + body)
        await writer.drain()
        await eventually(lambda: _upload_begun(gateway, temp_dir), "the upload to begin")
        writer.write_eof()
        try:
            answer = await read_answer(reader)
        except ConnectionResetError:
            answer = None
    if answer is not None:
        check_problem(answer.status, answer.headers, answer.body)
    await assert_eventually_nothing_left(gateway, temp_dir, before)


async def test_content_length_shorter_than_the_body(
    gateway: Gateway, temp_dir: Path, before: Inventory
) -> None:
    """A Content-Length shorter than the bytes sent frames the body by the
    header (RFC 9112 §6.3): the first bytes are the upload, the rest would be
    a next request. Sent with the checksum of everything, no answer is a
    success: the short upload fails its check (422) if it runs at all, and
    the rest is no request (400; aiohttp's parser may refuse the whole
    segment at once). The connection ends, and nothing stays."""
    key = await gateway.key()
    sent = os.urandom(20_000)
    checksum = hashlib.sha256(sent).hexdigest()
    raw = upload_start(key, [("Content-Length", "5000"), ("X-Checksum-SHA256", checksum)])
    answers: list[Answer] = []
    async with connection(gateway) as (reader, writer):
        writer.write(raw + sent)
        await writer.drain()
        for _ in range(3):
            try:
                answer = await read_answer(reader)
            except ConnectionResetError:
                break
            if answer is None:
                break
            answers.append(answer)
    assert answers, "closed without an answer"
    assert all(400 <= a.status < 500 for a in answers), [(a.status, a.body[:80]) for a in answers]
    for answer in answers:
        if answer.headers.get("Content-Type", "").startswith("application/problem+json"):
            check_problem(answer.status, answer.headers, answer.body, 422)
    await assert_eventually_nothing_left(gateway, temp_dir, before)


# -------------------------------------------------------------- size limit
def form_over_limit() -> bytes:
    return file_part(data=os.urandom(LIMIT + 1)) + CLOSE


async def _chunks(data: bytes, size: int = 8192) -> AsyncIterator[bytes]:
    for at in range(0, len(data), size):
        yield data[at : at + size]


@pytest.mark.parametrize(
    "case",
    ["raw-one-byte-over-with-length", "form-with-length", "form-chunked", "gzip-expanding"],
)
async def test_over_the_size_limit(
    gateway: Gateway, temp_dir: Path, before: Inventory, case: str
) -> None:
    """413 for a file one byte over the limit, however it is framed: the
    limit counts the file's bytes, not the form around them, and not the
    compressed size on the wire. (A raw body far over the limit, with a
    Content-Length or chunked: test_api_faults.py.)"""
    auth = await gateway.auth()
    headers: dict[str, str] = {"Content-Type": FORM}
    data: bytes | AsyncIterator[bytes]
    if case == "raw-one-byte-over-with-length":
        data, headers = os.urandom(LIMIT + 1), {}
    elif case == "form-with-length":
        data = form_over_limit()
    elif case == "form-chunked":
        data = _chunks(form_over_limit())
    else:
        data = gzip.compress(bytes(100 * LIMIT))
        headers = {"Content-Encoding": "gzip"}
        assert len(data) < LIMIT
    resp = await gateway.client.post("/v1/files", data=data, headers={**auth, **headers})
    check_problem(resp.status, resp.headers, await resp.read(), 413)
    await assert_nothing_left(gateway, temp_dir, before)


async def test_over_the_limit_after_100_continue(
    gateway: Gateway, temp_dir: Path, before: Inventory
) -> None:
    """``Expect: 100-continue`` with no length to judge: the server lets the
    body come and cuts it at the limit."""
    key = await gateway.key()
    async with connection(gateway) as (reader, writer):
        writer.write(upload_start(key, [*CHUNKED, ("Expect", "100-continue")]))
        await writer.drain()
        interim = await reader.readuntil(b"\r\n\r\n")
        assert interim.startswith(b"HTTP/1.1 100"), interim
        data = os.urandom(2 * LIMIT)
        writer.write(b"%x\r\n" % len(data) + data + b"\r\n0\r\n\r\n")
        await writer.drain()
        answer = await read_answer(reader)
    assert answer is not None
    check_problem(answer.status, answer.headers, answer.body, 413)
    await assert_nothing_left(gateway, temp_dir, before)


# ------------------------------------------------------------ TTL, limits
OPTION_CASES = {
    # ttl: the upload's and a link's (``test_api_files.py``: forever, 25h, 0)
    "ttl-negative": "ttl=-1",
    "ttl-zero-seconds": "ttl=0s",
    "ttl-zero-float": "ttl=0.0",
    "ttl-empty": "ttl=",
    "ttl-words": "ttl=soon",
    "ttl-exponent": "ttl=1e3",
    "ttl-leading-dot": "ttl=.5",
    "ttl-trailing-dot": "ttl=5.",
    "ttl-plus": "ttl=%2B5",
    "ttl-hex": "ttl=0x10",
    "ttl-nan": "ttl=nan",
    "ttl-inf": "ttl=inf",
    "ttl-400-digits": "ttl=" + "9" * 400,
    "ttl-over-max-by-a-second": "ttl=86281",
    "ttl-one-day": "ttl=1d",
    "ttl-compound-over-max": "ttl=23h58m1s",
    "ttl-arabic-indic-digit": "ttl=%D9%A3",
    "ttl-fullwidth-digits": "ttl=%EF%BC%91%EF%BC%90",
    "ttl-twice": "ttl=10&ttl=20",
    "ttl-twice-one-empty": "ttl=60&ttl=",
    "ttl-invalid-utf8": "ttl=%FF",
    # max_downloads (``test_api_files.py``: 0, -1)
    "max-downloads-empty": "max_downloads=",
    "max-downloads-words": "max_downloads=once",
    "max-downloads-float": "max_downloads=1.5",
    "max-downloads-exponent": "max_downloads=1e3",
    "max-downloads-ten-digits": "max_downloads=1000000000",
    "max-downloads-arabic-indic-digit": "max_downloads=%D9%A3",
    "max-downloads-plus": "max_downloads=%2B1",
    "max-downloads-space": "max_downloads=%201",
    "max-downloads-hex": "max_downloads=0x1",
    "max-downloads-twice": "max_downloads=1&max_downloads=5",
}


#: Over the upload's maximum, but a link's ttl is only capped at the file's
#: expiry (documented), so these are checked on uploads alone.
OVER_MAX = {"ttl-over-max-by-a-second", "ttl-one-day", "ttl-compound-over-max"}


@pytest.mark.parametrize("query", OPTION_CASES.values(), ids=OPTION_CASES.keys())
async def test_hostile_upload_options(
    gateway: Gateway, temp_dir: Path, before: Inventory, query: str
) -> None:
    """A bad or ambiguous ``ttl``/``max_downloads`` is a 400 (never a file
    kept for a lifetime nobody asked for). A bad ``ttl`` is refused by the
    link route too, which leaves the file as it was."""
    answer = await upload_raw(gateway, b"data", target=f"/v1/files?{query}")
    check_problem(answer.status, answer.headers, answer.body, 400, where=query)
    await assert_nothing_left(gateway, temp_dir, before)
    if not query.startswith("ttl=") or query in {OPTION_CASES[name] for name in OVER_MAX}:
        return
    meta = await gateway.upload(b"linked")
    with_file = await inventory(gateway, temp_dir)
    resp = await gateway.client.post(
        f"/v1/files/{meta['id']}/links?{query}", headers=await gateway.auth()
    )
    check_problem(resp.status, resp.headers, await resp.read(), 400, where=query)
    assert await inventory(gateway, temp_dir) == with_file


async def test_ttl_edges_that_are_valid(gateway: Gateway) -> None:
    """The limits are where the documentation puts them: ``MAX_TTL``
    (23h58m) itself, decimals and compounds."""
    for ttl, seconds in (("23h58m", 86280.0), ("1.5", 1.5), ("1h30m", 5400.0)):
        meta = await gateway.upload(b"x", params={"ttl": ttl})
        resp = await gateway.client.head(f"/v1/files/{meta['id']}", headers=await gateway.auth())
        assert resp.status == 200
        loaded = await gateway.services.metadata.files.load(ids.from_text(meta["id"]))
        assert loaded is not None
        record = loaded[0]
        assert record.expires_at - record.created_at == pytest.approx(seconds)
