"""Random and malformed requests against a real gateway.

The invariant (docs/architecture.md, "The HTTP API"): no request can produce a 5xx by its
shape alone, and every answer of status 400 or more is
``application/problem+json`` whose ``type``, ``title`` and ``status`` are
present and whose ``status`` is the HTTP status.

How hypothesis meets asyncio here: hypothesis runs each example as a plain
function call and does not mix with function-scoped async fixtures (the
fixture would be set up once and shared by every example, which its health
check rejects). So the test itself is an ordinary pytest-asyncio test that
starts one gateway with ``running_gateway`` and then runs the
hypothesis-decorated function in a worker thread (``asyncio.to_thread``).
Each example hands its request to the gateway's event loop with
``asyncio.run_coroutine_threadsafe`` and waits for the answer with a bound.
The loop keeps serving between examples, one gateway serves the whole run,
and a failing example is shrunk and reported by hypothesis as usual.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import gzip
import json
import string
import urllib.parse
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from hypothesis import HealthCheck, given, note, settings
from hypothesis import strategies as st
from yarl import URL

from filestore.metadata.base import Role
from tests.support import db
from tests.support.db import MetadataBackend
from tests.support.gateway import Gateway, running_gateway

PROBLEM = "application/problem+json"
WAIT = 20.0


@dataclass(frozen=True)
class Request:
    method: str
    path: str  # already percent-encoded, sent as is
    query: str  # already percent-encoded, sent as is
    headers: tuple[tuple[str, str], ...] = ()
    body: bytes | None = None

    def url(self, base: str) -> URL:
        return URL(base + self.path + (f"?{self.query}" if self.query else ""), encoded=True)


@dataclass
class Answer:
    status: int
    content_type: str
    body: bytes
    headers: Mapping[str, str] = field(default_factory=dict)


async def send(session: aiohttp.ClientSession, base: str, req: Request) -> Answer:
    async with session.request(
        req.method,
        req.url(base),
        headers=list(req.headers),
        data=req.body,
        allow_redirects=False,
        # Take the answer's bytes as they come, whatever it claims to be.
        auto_decompress=False,
    ) as resp:
        body = await resp.read()
        return Answer(resp.status, resp.headers.get("Content-Type", ""), body, resp.headers)


def check_answer(req: Request, answer: Answer) -> None:
    """The invariant, with the request in every failure message."""
    where = f"{req.method} {req.path}?{req.query} {dict(req.headers)} -> {answer.status}"
    assert answer.status < 500, f"{where}: {answer.body[:300]!r}"
    if answer.status < 400:
        return
    assert answer.content_type.split(";")[0].strip() == PROBLEM, (
        f"{where}: Content-Type {answer.content_type!r}, body {answer.body[:200]!r}"
    )
    if req.method == "HEAD":
        return  # no body to check
    doc = json.loads(answer.body)
    assert isinstance(doc, dict), where
    assert isinstance(doc.get("type"), str) and doc["type"], f"{where}: {doc}"
    assert isinstance(doc.get("title"), str) and doc["title"], f"{where}: {doc}"
    assert doc.get("status") == answer.status, f"{where}: {doc}"


@dataclass
class Target:
    """What the strategies draw from: the running gateway's keys and files."""

    keys: dict[str, str]
    file_ids: list[str]


# ---------------------------------------------------------------- strategies
# A request is drawn as a well-formed call of a real route (real file ids, a
# valid key most of the time) plus a few kinds of damage: another method,
# a junk path, junk query parameters, junk header values, a junk body. Pure
# noise mostly tests the router's 404; near-valid requests reach the handlers.
PATH_SAFE = string.ascii_letters + string.digits + "-._~!$&'()*+,;=:@"
ID_ALPHABET = string.ascii_letters + string.digits + "-_"

ROUTES = [
    ("POST", "/v1/files"),
    ("POST", "/v1/files"),
    ("POST", "/v1/files"),
    ("GET", "/v1/files/{id}"),
    ("GET", "/v1/files/{id}"),
    ("HEAD", "/v1/files/{id}"),
    ("DELETE", "/v1/files/{id}"),
    ("POST", "/v1/files/{id}/links"),
    ("GET", "/v1/files/{id}/receipt"),
    ("GET", "/v1/purge/status"),
    ("POST", "/v1/purge/run"),
    ("GET", "/v1/audit/deletions"),
    ("GET", "/v1/audit/checkpoint"),
    ("GET", "/v1/audit/public-key"),
    ("GET", "/healthz"),
    ("GET", "/readyz"),
    ("GET", "/metrics"),
    ("GET", "/openapi.json"),
]
#: Methods the HTTP parser accepts, so they reach the application (llhttp
#: refuses unknown method tokens itself: see the parser test below).
METHODS = ["GET", "HEAD", "POST", "DELETE", "PUT", "PATCH", "OPTIONS", "TRACE", "PROPFIND"]


def sometimes(
    strategy: st.SearchStrategy[Any], default: Any, one_in: int
) -> st.SearchStrategy[Any]:
    """``default`` most of the time, a draw from ``strategy`` one time in
    ``one_in``."""
    return st.sampled_from([False] * (one_in - 1) + [True]).flatmap(
        lambda use: strategy if use else st.just(default)
    )


def percent_junk() -> st.SearchStrategy[str]:
    """Percent-escapes of arbitrary bytes, plus broken escapes."""
    escape = st.binary(min_size=1, max_size=12).map(lambda b: "".join(f"%{x:02X}" for x in b))
    broken = st.sampled_from(["%", "%z", "%zz", "%G0", "%%", "%0", "%C0%AF", "%2e%2e", "%2F"])
    plain = st.text(PATH_SAFE, max_size=10)
    return st.lists(st.one_of(escape, broken, plain), min_size=1, max_size=5).map("".join)


def file_ids(target: Target) -> st.SearchStrategy[str]:
    junk = st.one_of(
        st.text(ID_ALPHABET, min_size=22, max_size=22),  # well-formed, unknown
        st.text(ID_ALPHABET, max_size=40),
        percent_junk(),
        st.sampled_from(["..", ".", "%2e%2e", "A" * 21 + "B", "%00", "x/y"]),
    )
    return sometimes(junk, None, 3).flatmap(
        lambda j: st.sampled_from(target.file_ids) if j is None else st.just(j)
    )


def junk_paths() -> st.SearchStrategy[str]:
    segments = st.lists(st.one_of(st.text(PATH_SAFE, max_size=12), percent_junk()), max_size=4)
    return st.one_of(
        segments.map(lambda parts: "/" + "/".join(parts)),
        percent_junk().map(lambda j: "/v1/files/" + j),
        st.sampled_from(
            ["/v1/files/", "/v1/files//", "/v1//files", "/V1/FILES", "/v1/files/x/links/y"]
        ),
    )


QUERY_KEYS = [
    "ttl",
    "filename",
    "max_downloads",
    "expires",
    "signature",
    "format",
    "since",
    "until",
    "after_seq",
    "limit",
    "x",
    "",
]
VALUE_SAMPLES = [
    "",
    "0",
    "-1",
    "1e9999",
    "nan",
    "inf",
    "99999999999999999999999999",
    "1.5h",
    "25h",
    "10s",
    "jsonl",
    "csv",
    "xml",
    "../etc/passwd",
    "a\\b",
    "\x00",
    "\x7f",
    "日本.txt",
    "x" * 300,
    "2026-01-01T00:00:00Z",
]


def queries() -> st.SearchStrategy[str]:
    key = st.one_of(st.sampled_from(QUERY_KEYS), st.text(max_size=8))
    value = st.one_of(st.sampled_from(VALUE_SAMPLES), st.text(max_size=20))
    pair = st.builds(
        lambda k, v, raw: (
            # "raw" lets '%', '=' and '&' through unescaped: broken escapes
            # and separators, but never bytes a request line cannot carry.
            urllib.parse.quote(k, safe="") + "=" + urllib.parse.quote(v, safe="%=&" if raw else "")
        ),
        key,
        value,
        st.booleans(),
    )
    encoded = st.lists(pair, min_size=1, max_size=4).map("&".join)
    return st.one_of(encoded, percent_junk(), st.just("&&=&"))


# Header values: printable ASCII without CR/LF (a client cannot send those)
# and some non-ASCII for file names.
HEADER_TEXT = st.text(
    st.characters(min_codepoint=0x20, max_codepoint=0x7E) | st.sampled_from("é日\t"),
    max_size=60,
)


def choice(samples: list[str]) -> st.SearchStrategy[str]:
    return st.sampled_from(samples) | HEADER_TEXT


def authorization(target: Target) -> st.SearchStrategy[str | None]:
    client = target.keys["client"]
    junk = st.one_of(
        st.none(),
        st.sampled_from([f"Bearer {k}" for k in target.keys.values()]),
        st.sampled_from(
            [
                "Bearer",
                "Bearer ",
                "Basic YWxhZGRpbjpvcGVuc2VzYW1l",
                "Bearer fs_000000000000_" + "A" * 43,
                f"bearer {client}",
                f"Bearer {client}x",
                f"Bearer  {client}",
                "Bearer fs__",
            ]
        ),
        HEADER_TEXT,
    )
    return sometimes(junk, f"Bearer {client}", 3)


DIGEST = base64.b64encode(b"\x00" * 32).decode()
HEADER_JUNK: dict[str, st.SearchStrategy[str]] = {
    "Range": choice(
        [
            "bytes=0-0",
            "bytes=-1",
            "bytes=5-",
            "bytes=1-0",
            "bytes=0-1,2-3",
            "bytes=-0",
            "bytes=99999999999999999999999-",
            "items=0-1",
            "bytes=",
        ]
    ),
    "If-Range": choice(['"x"', 'W/"x"', "Mon, 01 Jan 2024 00:00:00 GMT"]),
    "If-None-Match": choice(["*", '"x"', "W/*"]),
    "Content-Type": choice(
        [
            "multipart/form-data",
            "multipart/form-data; boundary=",
            "multipart/form-data; boundary=zz",
            'text/plain; charset="',
            "application/json",
            "application/octet-stream",
            "a/b/c",
            ";",
        ]
    ),
    "Content-Digest": choice(
        [f"sha-256=:{DIGEST}:", "sha-256=::", "sha-256=:AAAA:", "sha-512=:AA==:", "sha-256"]
    ),
    "X-Checksum-SHA256": choice(["0" * 64, "g" * 64, "0" * 63, ""]),
    "Content-Disposition": choice(
        [
            'attachment; filename="../x"',
            "attachment; filename*=UTF-8''%FF%FE",
            'attachment; filename=""',
            "attachment; filename*=UTF-8''a%2Fb",
            'form-data; name="file"; filename="a\\\\b"',
            "attachment; filename=.",
            "attachment; filename",
            ":",
            "inline",
        ]
    ),
    # Only encodings aiohttp does not decode: a gzip/deflate/br body is
    # decoded by the HTTP layer itself, and what goes wrong there is covered
    # by the explicit tests at the end of this file.
    "Content-Encoding": st.sampled_from(["identity", "x-unknown", "gzip2"]),
    # Unknown expectations: see test_unknown_expectation_is_a_problem.
    "Expect": st.just("100-continue"),
    "Accept": choice(["application/json", "*/*", "text/html"]),
}


def header_sets(target: Target) -> st.SearchStrategy[tuple[tuple[str, str], ...]]:
    one = st.sampled_from(sorted(HEADER_JUNK)).flatmap(
        lambda name: HEADER_JUNK[name].map(lambda value: (name, value))
    )
    others = st.lists(one, max_size=3, unique_by=lambda pair: pair[0])
    return st.builds(
        lambda auth, rest: ((("Authorization", auth),) if auth is not None else ()) + tuple(rest),
        authorization(target),
        others,
    )


def bodies() -> st.SearchStrategy[bytes | None]:
    form = st.builds(
        lambda name, data: (
            b'--zz\r\nContent-Disposition: form-data; name="file"; filename="'
            + name.encode("utf-8", "surrogatepass")
            + b'"\r\n\r\n'
            + data
            + b"\r\n--zz--\r\n"
        ),
        st.text(max_size=20).filter(lambda t: '"' not in t and "\r" not in t and "\n" not in t),
        st.binary(max_size=200),
    )
    return st.one_of(st.binary(max_size=2048), st.none(), form)


@st.composite
def requests(draw: st.DrawFn, target: Target) -> Request:
    method, template = draw(st.sampled_from(ROUTES))
    method = draw(sometimes(st.sampled_from(METHODS), method, 6))
    path = template.replace("{id}", draw(file_ids(target)))
    path = draw(sometimes(junk_paths(), path, 6))
    return Request(
        method=method,
        path=path,
        query=draw(sometimes(queries(), "", 3)),
        headers=draw(header_sets(target)),
        body=draw(bodies()),
    )


# -------------------------------------------------------------------- tests
async def _prepare(gw: Gateway) -> Target:
    keys = {
        "client": await gw.key("acme"),
        "other-tenant": await gw.key("globex"),
        "operator": await gw.key("acme", Role.OPERATOR),
        "auditor": await gw.key("acme", Role.AUDITOR),
    }
    file_ids = [
        (await gw.upload(b"fuzz target " * 2000, params={"filename": "t.txt"}))["id"],
        (await gw.upload(b"", params={"max_downloads": "1"}))["id"],
        (await gw.upload(b"other", tenant="globex"))["id"],
    ]
    return Target(keys, file_ids)


def _base(gw: Gateway) -> str:
    return f"http://{gw.client.server.host}:{gw.client.server.port}"


async def test_random_requests_never_5xx_and_errors_are_problems(
    tmp_path: Path, metadata_backend: MetadataBackend
) -> None:
    async with running_gateway(tmp_path, database_url=metadata_backend.url) as gw:
        target = await _prepare(gw)
        loop = asyncio.get_running_loop()
        base = _base(gw)
        session = gw.client.session
        seen: set[int] = set()

        @settings(
            max_examples=200,
            deadline=None,
            database=None,
            suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
        )
        @given(req=requests(target))
        def one_request(req: Request) -> None:
            note(repr(req))
            future = asyncio.run_coroutine_threadsafe(send(session, base, req), loop)
            try:
                answer = future.result(timeout=WAIT)
            except TimeoutError:
                future.cancel()
                raise AssertionError(f"no answer within {WAIT} s: {req}") from None
            seen.add(answer.status)
            check_answer(req, answer)

        await asyncio.to_thread(one_request)
        # The run reached past the front door: not everything was a 401/404.
        assert any(s < 300 for s in seen) and any(s >= 400 for s in seen), seen
        # Bad input left no trace: no upload half-done, no blob without a
        # live row, no live row without its blob.
        assert _part_files(gw) == []
        states = await _states(gw)
        assert "uploading" not in states.values(), states
        active = {hex_id for hex_id, state in states.items() if state == "active"}
        assert _blob_names(gw) == active


def _garbage_for(schema: Mapping[str, Any]) -> list[str]:
    kind = schema.get("type")
    if kind == "integer":
        return ["-1", "0", "1e9999", "abc", "9" * 40, ""]
    return ["", "%00", "..", "x" * 300, "\u65e5\u672c", "-1", "[]"]


def _operations(doc: Mapping[str, Any]) -> list[tuple[str, str, dict[str, Any]]]:
    ops = []
    for path, item in doc["paths"].items():
        for method, op in item.items():
            if method in ("get", "put", "post", "delete", "patch", "head", "options"):
                ops.append((method.upper(), path, op))
    return ops


async def test_every_documented_operation_with_garbage_parameters(
    tmp_path: Path, metadata_backend: MetadataBackend
) -> None:
    """For each operation in ``/openapi.json``: valid keys of every role, with
    garbage in each path, query and header parameter it describes."""
    async with running_gateway(tmp_path, database_url=metadata_backend.url) as gw:
        target = await _prepare(gw)
        base = _base(gw)
        resp = await gw.client.get("/openapi.json")
        assert resp.status == 200
        doc = await resp.json()
        operations = _operations(doc)
        assert len(operations) >= 5, operations
        sent = 0
        for method, template, op in operations:
            params = [*doc["paths"][template].get("parameters", []), *op.get("parameters", [])]
            garbage_sets: list[dict[str, str]] = []
            for i in range(6):
                values = {}
                for param in params:
                    choices = _garbage_for(param.get("schema", {}))
                    values[f"{param['in']}:{param['name']}"] = choices[i % len(choices)]
                garbage_sets.append(values)
            for key in target.keys.values():
                for values in garbage_sets:
                    path = template
                    query: list[str] = []
                    hdrs: list[tuple[str, str]] = [("Authorization", f"Bearer {key}")]
                    for name, value in values.items():
                        where, _, pname = name.partition(":")
                        quoted = urllib.parse.quote(value, safe="")
                        if where == "path":
                            path = path.replace("{" + pname + "}", quoted or "%20")
                        elif where == "query":
                            query.append(f"{urllib.parse.quote(pname)}={quoted}")
                        elif where == "header":
                            hdrs.append((pname, value))
                    req = Request(method, path, "&".join(query), tuple(hdrs), b"garbage")
                    async with asyncio.timeout(WAIT):
                        answer = await send(gw.client.session, base, req)
                    check_answer(req, answer)
                    sent += 1
        assert sent >= len(operations) * len(target.keys)


# ------------------------------------------------ what the HTTP layer decides
async def _states(gw: Gateway) -> dict[str, str]:
    return {fid.hex(): state for fid, state in (await db.file_states(gw.services)).items()}


def _part_files(gw: Gateway) -> list[Path]:
    return sorted((gw.settings.storage_dir / "tmp").glob("*"))


def _blob_names(gw: Gateway) -> set[str]:
    return {p.name for p in (gw.settings.storage_dir / "blobs").rglob("*") if p.is_file()}


async def _raw_exchange(gw: Gateway, raw: bytes) -> tuple[int, str, bytes]:
    """Send ``raw`` bytes as they are and read one answer (bounded)."""
    server = gw.client.server
    reader, writer = await asyncio.open_connection(server.host, server.port)
    try:
        writer.write(raw)
        await writer.drain()
        async with asyncio.timeout(WAIT):
            head = (await reader.readuntil(b"\r\n\r\n")).decode("latin-1")
            fields = dict(
                (k.strip().lower(), v.strip())
                for k, _, v in (line.partition(":") for line in head.split("\r\n")[1:] if line)
            )
            length = int(fields.get("content-length", "0"))
            body = await reader.readexactly(length)
    finally:
        writer.close()
        with contextlib.suppress(OSError):
            await writer.wait_closed()
    return int(head.split()[1]), fields.get("content-type", ""), body


def _problem_or_reason(status: int, content_type: str, body: bytes) -> str | None:
    """None if the answer is a 4xx problem+json matching its status, else
    what is wrong with it."""
    if not 400 <= status < 500:
        return f"status {status}"
    if content_type.split(";")[0].strip() != PROBLEM:
        return f"{status} as {content_type!r}: {body[:60]!r}"
    doc = json.loads(body)
    if doc.get("status") != status or not doc.get("type") or not doc.get("title"):
        return f"{status} with problem {doc}"
    return None


async def test_requests_the_http_parser_rejects_are_400(gateway: Gateway) -> None:
    """Requests that never reach a handler, because aiohttp's HTTP parser
    refuses them, answer 400 — never a 5xx, never a hang.

    They are the one place the answer is aiohttp's own plain text rather than
    problem+json: no request object exists yet, and replacing aiohttp's
    protocol-level error page would mean subclassing its private request
    handler. Documented in docs/operations.md as a known limit."""
    auth = f"Authorization: Bearer {await gateway.key()}\r\n".encode()
    upload = b"POST /v1/files HTTP/1.1\r\nHost: t\r\n" + auth
    cases = {
        "unknown method": b"FROB /v1/files HTTP/1.1\r\nHost: t\r\n\r\n",
        "space in header name": b"GET /healthz HTTP/1.1\r\nHost: t\r\nBad Name: y\r\n\r\n",
        "control character in path": b"GET /v1/files/\x01 HTTP/1.1\r\nHost: t\r\n\r\n",
        "unknown HTTP version": b"GET /healthz HTTP/9.9\r\nHost: t\r\n\r\n",
        "HTTP/1.1 without Host": b"GET /healthz HTTP/1.1\r\n\r\n",
        "oversized header": b"GET /healthz HTTP/1.1\r\nHost: t\r\nX: " + b"a" * 9000 + b"\r\n\r\n",
        "non-numeric Content-Length": upload + b"Content-Length: ten\r\n\r\n",
        "Content-Length with chunked": upload
        + b"Content-Length: 3\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n0\r\n\r\n",
        "bad chunk size": upload + b"Transfer-Encoding: chunked\r\n\r\nzz\r\nabc\r\n",
        "undecodable Content-Encoding": upload
        + b"Content-Encoding: br\r\nContent-Length: 3\r\n\r\nabc",
    }
    wrong = {}
    for name, raw in cases.items():
        status, _content_type, _body = await _raw_exchange(gateway, raw)
        if status != 400:
            wrong[name] = status
    assert not wrong, f"answers that are not 400: {wrong}"


async def test_unknown_expectation_is_a_problem(gateway: Gateway) -> None:
    resp = await gateway.client.post(
        "/v1/files", data=b"x", headers={**(await gateway.auth()), "Expect": "the-unexpected"}
    )
    reason = _problem_or_reason(
        resp.status, resp.headers.get("Content-Type", ""), await resp.read()
    )
    assert reason is None, reason
    assert resp.status == 417


async def test_corrupt_compressed_upload_is_400_and_leaves_nothing(gateway: Gateway) -> None:
    """A body that says ``Content-Encoding: gzip`` but is not gzip is the
    client's mistake (400), not a server failure and not a timeout."""
    resp = await gateway.client.post(
        "/v1/files",
        data=b"this is not gzip at all",
        headers={**(await gateway.auth()), "Content-Encoding": "gzip"},
    )
    reason = _problem_or_reason(
        resp.status, resp.headers.get("Content-Type", ""), await resp.read()
    )
    assert reason is None, reason
    assert resp.status == 400
    assert await _states(gateway) == {}
    assert _part_files(gateway) == [] and _blob_names(gateway) == set()


async def test_compressed_upload_is_stored_decoded_or_refused(gateway: Gateway) -> None:
    """A well-formed gzip body: either the server stores what it decodes
    (and Content-Length, which counts encoded bytes, does not make it call a
    complete body incomplete), or it refuses the encoding with 415. Never a
    408 for a client that sent every byte."""
    data = b"compressible " * 1000
    packed = gzip.compress(data)
    resp = await gateway.client.post(
        "/v1/files", data=packed, headers={**(await gateway.auth()), "Content-Encoding": "gzip"}
    )
    body = await resp.read()
    if resp.status == 415:
        assert _problem_or_reason(resp.status, resp.headers.get("Content-Type", ""), body) is None
        assert await _states(gateway) == {}
        return
    assert resp.status == 201, (resp.status, body[:300])
    meta = json.loads(body)
    assert meta["size"] == len(data)
    got = await gateway.get(meta["id"])
    assert await got.read() == data


@pytest.mark.parametrize(
    ("where", "value"),
    [
        ("header", ":"),
        ("header", "attachment; filename"),
        ("form part", 'form-data; name="file"; filename'),
        ("form part", "form-data; ;"),
    ],
)
async def test_malformed_content_disposition_is_400(
    gateway: Gateway, where: str, value: str
) -> None:
    """The client tried to name the file and got the header wrong: a 400,
    whatever aiohttp's parser does with it (it warns and gives up; with
    warnings as errors, as in this suite, that must not become a 500)."""
    auth = await gateway.auth()
    if where == "header":
        resp = await gateway.client.post(
            "/v1/files", data=b"data", headers={**auth, "Content-Disposition": value}
        )
    else:
        form = f"--zz\r\nContent-Disposition: {value}\r\n\r\ndata\r\n--zz--\r\n".encode()
        resp = await gateway.client.post(
            "/v1/files",
            data=form,
            headers={**auth, "Content-Type": "multipart/form-data; boundary=zz"},
        )
    reason = _problem_or_reason(
        resp.status, resp.headers.get("Content-Type", ""), await resp.read()
    )
    assert reason is None, reason
    assert resp.status == 400
    assert await _states(gateway) == {}
    assert _part_files(gateway) == [] and _blob_names(gateway) == set()
