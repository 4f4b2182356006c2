"""Hostile reads and credentials: file ids, ranges, tokens, roles, tenants,
and the last allowed download cut mid-body (issue 9).

Every case is answered with a clear 4xx ``application/problem+json`` (never a
5xx, never a hang) and changes nothing: the module's files keep their rows,
keys, blobs and download counts (see :mod:`tests.support.hostile`). Requests
go out as raw HTTP/1.1, so what is sent is exactly what the case says. One
gateway per backend serves the module (SQLite, then a real PostgreSQL).

Already proven elsewhere and not repeated: the basic 401/403/404 answers
and a revoked key on a download (``test_api_files.py``: ``test_auth``,
``test_tenant_isolation``), signed links (``test_api_files.py``), random
damage to every route (``test_api_fuzz.py``).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import secrets
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

import pytest
import pytest_asyncio
from aiohttp import web

from filestore import ids
from filestore.api.access_log import AccessLogger
from filestore.api.app import create_app
from filestore.auth import create_key
from filestore.metadata.base import Role
from tests.support import db
from tests.support.gateway import Gateway
from tests.support.hostile import (
    Answer,
    Inventory,
    Peer,
    check_problem,
    connection,
    eventually,
    exchange,
    inventory,
    module_gateway,
    request_head,
)

pytestmark = pytest.mark.asyncio(loop_scope="module")

SIZE = 1000
DATA = os.urandom(SIZE)


@dataclass
class World:
    """The module's gateway and what it holds: keys of every role, and files
    of two tenants, live and deleted."""

    gw: Gateway
    keys: dict[str, str]
    #: acme's live file (``DATA``), its empty file, its deleted file;
    #: globex's live and deleted files.
    files: dict[str, str]

    def secrets(self) -> list[str]:
        return [key.split("_", 2)[2] for key in self.keys.values()]


@pytest_asyncio.fixture(scope="module", loop_scope="module", params=["sqlite", "postgresql"])
async def world(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> AsyncIterator[World]:
    async with module_gateway(request, tmp_path_factory.mktemp("hostile-access")) as gw:
        keys = {
            "client": await gw.key("acme"),
            "other-tenant": await gw.key("globex"),
            "operator": await gw.key("acme", Role.OPERATOR),
            "auditor": await gw.key("acme", Role.AUDITOR),
        }
        files = {
            "live": (await gw.upload(DATA, params={"filename": "live.bin"}))["id"],
            "empty": (await gw.upload(b""))["id"],
            "deleted": (await gw.upload(b"gone"))["id"],
            "other-live": (await gw.upload(b"theirs", tenant="globex"))["id"],
            "other-deleted": (await gw.upload(b"theirs, gone", tenant="globex"))["id"],
        }
        for name, tenant in (("deleted", "acme"), ("other-deleted", "globex")):
            resp = await gw.client.delete(f"/v1/files/{files[name]}", headers=await gw.auth(tenant))
            assert resp.status == 204
        # A pass signs a checkpoint, so the deleted files have receipts.
        resp = await gw.client.post("/v1/purge/run", headers=await gw.auth("acme", Role.OPERATOR))
        assert resp.status == 200
        yield World(gw, keys, files)


@pytest_asyncio.fixture(loop_scope="module")
async def before(world: World) -> AsyncIterator[Inventory]:
    """The inventory before the case, which it must leave as it found."""
    found = await inventory(world.gw)
    yield found
    assert await inventory(world.gw) == found


async def send(
    world: World,
    method: str,
    target: str,
    headers: list[tuple[str, str]] | None = None,
    body: bytes = b"",
) -> Answer:
    """One raw request on a new connection; its answer (bounded)."""
    fields = list(headers or [])
    if body or method in ("POST", "PUT"):
        fields.append(("Content-Length", str(len(body))))
    raw = request_head(method, target, fields) + body
    answer = await exchange(world.gw, raw, head=method == "HEAD")
    assert answer is not None, f"{method} {target}: closed without an answer"
    return answer


def bearer(key: str) -> list[tuple[str, str]]:
    return [("Authorization", f"Bearer {key}")]


def fingerprint(doc: dict[str, Any]) -> tuple[Any, ...]:
    """What a client can tell two problems apart by (not the request id)."""
    return doc.get("status"), doc.get("type"), doc.get("title"), doc.get("detail")


# --------------------------------------------------------------------- ids
#: Every route that takes a file id: method, path after the id, whether the
#: read may come through a signed link instead of a key.
ID_ROUTES = [
    ("GET", ""),
    ("HEAD", ""),
    ("DELETE", ""),
    ("POST", "/links"),
    ("GET", "/receipt"),
]
UNKNOWN_ID = ids.to_text(b"\x00" * 16)
BAD_IDS = {
    "short": "abc",
    "one-character-short": "A" * 21,
    "one-character-long": "A" * 23,
    "5000-characters": "A" * 5000,
    "non-canonical-last-character": "A" * 21 + "B",
    "standard-base64-plus": "A" * 20 + "+A",
    "padded": UNKNOWN_ID + "==",
    "dot-dot": "..",
    "dot-dot-encoded": "%2e%2e",
    "traversal-with-encoded-slashes": "..%2F..%2Fhealthz",
    "traversal-raw": "../../healthz",
    "encoded-slash-inside": UNKNOWN_ID[:11] + "%2F" + UNKNOWN_ID[11:],
    "nul-after-an-id": UNKNOWN_ID + "%00",
    "nul-only": "%00",
    "backslashes": "..%5C..%5Cwin.ini",
    "cyrillic-a-look-alike": "%D0%90" + "A" * 21,
    "fullwidth-look-alikes": "%EF%BC%A1" * 22,
    "broken-escape": "%ZZ" + "A" * 19,
    "space": "%20" * 22,
}


@pytest.mark.parametrize("bad", BAD_IDS.values(), ids=BAD_IDS.keys())
async def test_hostile_ids(world: World, before: Inventory, bad: str) -> None:
    """Malformed, overlong and path-like ids, on every route that takes an
    id, with a key and through the signed-link query: a 404 problem exactly
    like that of a well-formed id that does not exist (no hint of a path or
    of a parse), and nothing read or deleted. (A raw ``/`` leaves the id
    route: that is the router's 404, also a problem.)"""
    key = world.keys["client"]
    for method, tail in ID_ROUTES:
        expected = await send(world, method, f"/v1/files/{UNKNOWN_ID}{tail}", bearer(key))
        answer = await send(world, method, f"/v1/files/{bad}{tail}", bearer(key))
        where = f"{method} /v1/files/{bad[:40]}{tail}"
        doc = check_problem(
            answer.status, answer.headers, answer.body, 404, head=method == "HEAD", where=where
        )
        if method != "HEAD" and "/" not in bad:
            assert fingerprint(doc) == fingerprint(json.loads(expected.body)), where
    for method in ("GET", "HEAD"):
        answer = await send(world, method, f"/v1/files/{bad}?expires=9999999999&signature=AAAA")
        check_problem(answer.status, answer.headers, answer.body, 404, head=method == "HEAD")


# ------------------------------------------------------------------ ranges
@dataclass(frozen=True)
class RangeCase:
    header: str
    #: 200 (whole file), 206 (the inclusive span) or 416.
    status: int
    span: tuple[int, int] | None = None
    file: str = "live"
    method: str = "GET"


HUGE = "9" * 23
RANGE_CASES = {
    "two-ranges": RangeCase("bytes=0-1,5-6", 200),
    "two-hundred-overlapping-ranges": RangeCase("bytes=" + ",".join(["0-0"] * 200), 200),
    "reversed": RangeCase("bytes=500-100", 200),
    "start-at-the-end": RangeCase(f"bytes={SIZE}-", 416),
    "wholly-past-the-end": RangeCase(f"bytes={SIZE}-{SIZE * 2}", 416),
    "end-past-the-end": RangeCase(f"bytes=990-{SIZE * 5}", 206, (990, SIZE - 1)),
    "last-byte": RangeCase(f"bytes={SIZE - 1}-{SIZE - 1}", 206, (SIZE - 1, SIZE - 1)),
    "19-digit-end": RangeCase("bytes=0-" + "9" * 19, 206, (0, SIZE - 1)),
    "19-digit-start": RangeCase("bytes=" + "9" * 19 + "-", 416),
    # More than 19 digits: ignored, as filestore/api/ranges.py documents.
    "23-digit-end": RangeCase(f"bytes=0-{HUGE}", 200),
    "23-digit-start": RangeCase(f"bytes={HUGE}-", 200),
    "23-digit-suffix": RangeCase(f"bytes=-{HUGE}", 200),
    "5000-digit-end": RangeCase("bytes=0-" + "9" * 5000, 200),
    "suffix-longer-than-the-file": RangeCase(f"bytes=-{SIZE * 5}", 206, (0, SIZE - 1)),
    "suffix-of-zero": RangeCase("bytes=-0", 416),
    "suffix-of-zeros": RangeCase("bytes=-000", 416),
    "unit-items": RangeCase("items=0-1", 200),
    "unit-missing": RangeCase("0-1", 200),
    "unit-in-capitals": RangeCase("BYTES=0-1", 206, (0, 1)),
    "no-dash": RangeCase("bytes=5", 200),
    "empty-set": RangeCase("bytes=", 200),
    "negative-start": RangeCase("bytes=-5-10", 200),
    "hex-positions": RangeCase("bytes=0x0-0xf", 200),
    "arabic-indic-digits": RangeCase("bytes=\u0660-\u0665", 200),
    "empty-file-first-byte": RangeCase("bytes=0-0", 416, file="empty"),
    "empty-file-suffix": RangeCase("bytes=-1", 416, file="empty"),
    "head-ignores-ranges": RangeCase("bytes=0-1", 200, method="HEAD"),
}


@pytest.mark.parametrize("case", RANGE_CASES.values(), ids=RANGE_CASES.keys())
async def test_hostile_ranges(world: World, before: Inventory, case: RangeCase) -> None:
    """Whatever the answer, it is one RFC 9110 allows and the one
    ``filestore.api.ranges`` documents: a single satisfiable range is a 206
    with a matching Content-Range, Content-Length and bytes; anything else
    that is not a single well-formed range is ignored (200, the whole file,
    no Content-Range); a well-formed range outside the file is a 416 problem
    with ``Content-Range: bytes */size``."""
    file_id = world.files[case.file]
    data = DATA if case.file == "live" else b""
    headers = [*bearer(world.keys["client"]), ("Range", case.header)]
    answer = await send(world, case.method, f"/v1/files/{file_id}", headers)
    where = f"Range: {case.header[:60]}"
    assert answer.status == case.status, (where, answer.status, answer.body[:200])
    if case.status == 416:
        check_problem(answer.status, answer.headers, answer.body, 416, where=where)
        assert answer.headers["Content-Range"] == f"bytes */{len(data)}", where
        return
    assert answer.headers["Accept-Ranges"] == "bytes"
    if case.status == 200:
        assert "Content-Range" not in answer.headers, where
        assert int(answer.headers["Content-Length"]) == len(data)
        assert answer.body == (b"" if case.method == "HEAD" else data), where
        return
    assert case.span is not None
    first, last = case.span
    assert answer.headers["Content-Range"] == f"bytes {first}-{last}/{len(data)}", where
    assert int(answer.headers["Content-Length"]) == last - first + 1
    assert answer.body == data[first : last + 1], where


async def test_refused_range_does_not_use_up_a_download(world: World) -> None:
    """A 416 is answered before the download is counted: a file limited to
    one download can still be read after any number of them."""
    meta = await world.gw.upload(b"once only", params={"max_downloads": "1"})
    for _ in range(3):
        answer = await send(
            world,
            "GET",
            f"/v1/files/{meta['id']}",
            [*bearer(world.keys["client"]), ("Range", "bytes=50-")],
        )
        check_problem(answer.status, answer.headers, answer.body, 416)
    answer = await send(world, "GET", f"/v1/files/{meta['id']}", bearer(world.keys["client"]))
    assert answer.status == 200 and answer.body == b"once only"
    await _settled(world, meta["id"])


# ------------------------------------------------------------------ tokens
@dataclass(frozen=True)
class Route:
    method: str
    #: ``{live}``/``{deleted}`` stand for the client's files.
    path: str
    role: Role

    def target(self, world: World) -> str:
        return self.path.format(live=world.files["live"], deleted=world.files["deleted"])


ROUTES = [
    Route("POST", "/v1/files", Role.CLIENT),
    Route("GET", "/v1/files/{live}", Role.CLIENT),
    Route("HEAD", "/v1/files/{live}", Role.CLIENT),
    Route("DELETE", "/v1/files/{live}", Role.CLIENT),
    Route("POST", "/v1/files/{live}/links", Role.CLIENT),
    Route("GET", "/v1/files/{deleted}/receipt", Role.CLIENT),
    Route("GET", "/v1/purge/status", Role.OPERATOR),
    Route("POST", "/v1/purge/run", Role.OPERATOR),
    Route("GET", "/v1/audit/deletions", Role.AUDITOR),
    Route("GET", "/v1/audit/checkpoint", Role.AUDITOR),
]
ROLE_KEY = {Role.CLIENT: "client", Role.OPERATOR: "operator", Role.AUDITOR: "auditor"}


async def _revoked(world: World, role: Role) -> str:
    key, record = await create_key(world.gw.services.metadata, role, "acme", world.gw.clock.now())
    assert await world.gw.services.metadata.api_keys.revoke(record.key_id, world.gw.clock.now())
    return key


def _wrong_secret(key: str) -> str:
    key_id = key.split("_")[1]
    return f"fs_{key_id}_{secrets.token_urlsafe(32)}"


#: How each case authenticates: (Authorization header values, query string),
#: built from the route's own valid key and a revoked key of its role.
TOKEN_CASES: dict[str, Any] = {
    "none": lambda key, revoked: ([], ""),
    "wrong-secret-of-a-real-key-id": lambda key, revoked: ([f"Bearer {_wrong_secret(key)}"], ""),
    "revoked-key-of-the-right-role": lambda key, revoked: ([f"Bearer {revoked}"], ""),
    "scheme-only": lambda key, revoked: (["Bearer"], ""),
    "basic-scheme": lambda key, revoked: ([f"Basic {key}"], ""),
    "token-scheme": lambda key, revoked: ([f"Token {key}"], ""),
    "key-with-a-character-more": lambda key, revoked: ([f"Bearer {key}x"], ""),
    "key-with-a-character-less": lambda key, revoked: ([f"Bearer {key[:-1]}"], ""),
    "two-keys-in-one-header": lambda key, revoked: ([f"Bearer {key} {key}"], ""),
    "a-list-of-credentials": lambda key, revoked: ([f"Bearer {key}, Bearer {key}"], ""),
    "non-ascii-key": lambda key, revoked: ([f"Bearer {key[:-1]}\u00e9"], ""),
    "6000-character-key": lambda key, revoked: (["Bearer fs_" + "a" * 6000], ""),
    "two-headers-valid-first": lambda key, revoked: ([f"Bearer {key}", "Bearer nope"], ""),
    "two-headers-valid-last": lambda key, revoked: (["Bearer nope", f"Bearer {key}"], ""),
    "two-headers-both-valid": lambda key, revoked: ([f"Bearer {key}", f"Bearer {key}"], ""),
    "key-as-access-token-query": lambda key, revoked: ([], f"access_token={key}"),
    "key-as-api-key-query": lambda key, revoked: ([], f"api_key={key}"),
    "key-as-a-query-name": lambda key, revoked: ([], key),
    "bearer-header-in-the-query": lambda key, revoked: ([], f"Authorization=Bearer%20{key}"),
}


@pytest.mark.parametrize("make", TOKEN_CASES.values(), ids=TOKEN_CASES.keys())
async def test_hostile_tokens(world: World, before: Inventory, make: Any) -> None:
    """No credential but one well-formed, current key in one Authorization
    header authenticates, on any route: a 401 problem with the Bearer
    challenge. A key in the query string is never taken (whatever the
    parameter), and neither it nor any other key comes back in the answer."""
    for route in ROUTES:
        key = world.keys[ROLE_KEY[route.role]]
        values, query = make(key, await _revoked(world, route.role))
        target = route.target(world) + (f"?{query}" if query else "")
        headers = [("Authorization", value) for value in values]
        body = b"x" if route.path == "/v1/files" else b""
        answer = await send(world, route.method, target, headers, body)
        where = f"{route.method} {route.path}"
        check_problem(
            answer.status,
            answer.headers,
            answer.body,
            401,
            head=route.method == "HEAD",
            where=where,
        )
        assert answer.headers["WWW-Authenticate"] == 'Bearer realm="filestore"', where
        echoed = answer.raw_head + answer.body
        assert not any(s.encode() in echoed for s in world.secrets()), where


@pytest.mark.parametrize("role", list(ROLE_KEY), ids=[r.value for r in ROLE_KEY])
async def test_wrong_role(world: World, before: Inventory, role: Role) -> None:
    """A valid key of another role is a 403 problem on every route it may
    not call, decided before any file is looked up: the same answer for an
    existing file as for one that never was, so a 403 tells nothing."""
    key = world.keys[ROLE_KEY[role]]
    refused = [route for route in ROUTES if route.role != role]
    assert refused
    for route in refused:
        body = b"x" if route.path == "/v1/files" else b""
        answer = await send(world, route.method, route.target(world), bearer(key), body)
        where = f"{role} {route.method} {route.path}"
        doc = check_problem(
            answer.status,
            answer.headers,
            answer.body,
            403,
            head=route.method == "HEAD",
            where=where,
        )
        if "{live}" in route.path and route.method != "HEAD":
            missing = route.path.format(live=UNKNOWN_ID)
            other = await send(world, route.method, missing, bearer(key))
            assert fingerprint(json.loads(other.body)) == fingerprint(doc), where


@pytest.mark.parametrize("which", ["other-live", "other-deleted"])
async def test_another_tenants_file_is_not_found(
    world: World, before: Inventory, which: str
) -> None:
    """Another tenant's file, live or deleted, is a 404 on every route that
    takes an id: the very answer a file that never existed gets (not a 403,
    not a 410, not a receipt), so ids cannot be probed across tenants. It is
    neither read, counted nor deleted (``before`` checks)."""
    key = world.keys["client"]
    for method, tail in ID_ROUTES:
        theirs = await send(world, method, f"/v1/files/{world.files[which]}{tail}", bearer(key))
        nobody = await send(world, method, f"/v1/files/{UNKNOWN_ID}{tail}", bearer(key))
        where = f"{method} {tail or '/'} of {which}"
        doc = check_problem(
            theirs.status, theirs.headers, theirs.body, 404, head=method == "HEAD", where=where
        )
        if method != "HEAD":
            assert fingerprint(doc) == fingerprint(json.loads(nobody.body)), where
    own = await send(
        world, "GET", f"/v1/files/{world.files[which]}", bearer(world.keys["other-tenant"])
    )
    assert own.status == (200 if which == "other-live" else 410)


@contextlib.asynccontextmanager
async def production_server(gw: Gateway) -> AsyncIterator[tuple[str, int]]:
    """The module's services behind the runner ``filestore serve`` builds
    (``filestore/cli.py``): its access log, and aiohttp's default of letting
    a handler run on when its client goes away (the test server cancels
    it). Yields the address."""
    app = create_app(gw.settings, services=gw.services)
    runner = web.AppRunner(
        app, access_log=logging.getLogger("filestore.access"), access_log_class=AccessLogger
    )
    await runner.setup()
    try:
        site = web.TCPSite(runner, "127.0.0.1", 0)
        await site.start()
        host, port = runner.addresses[0][:2]
        yield host, port
    finally:
        await runner.cleanup()


async def test_key_in_the_query_is_not_logged(
    world: World, caplog: pytest.LogCaptureFixture
) -> None:
    """The same requests on the production runner: no log line of any
    logger (the access log included) holds a key sent in the query string."""
    caplog.set_level(logging.DEBUG)
    async with production_server(world.gw) as address:
        for route in ROUTES:
            key = world.keys[ROLE_KEY[route.role]]
            for query in (f"access_token={key}", key):
                raw = request_head(route.method, f"{route.target(world)}?{query}", [])
                answer = await exchange(address, raw, head=route.method == "HEAD")
                assert answer is not None and answer.status == 401
    assert any(r.name == "filestore.access" for r in caplog.records), "no access log line"
    for record in caplog.records:
        text = record.getMessage()
        assert not any(s in text for s in world.secrets()), (record.name, text)


# ---------------------------------------------- the last download, cut
async def _state(world: World, file_id: str) -> str:
    return (await db.file_states(world.gw.services))[ids.from_text(file_id)]


async def _settled(world: World, file_id: str) -> None:
    """Wait for a last download's deletion, which runs on after the body."""

    async def purged() -> bool:
        return await _state(world, file_id) == "purged"

    await eventually(purged, "the last download to end in deletion")


async def _cut_download(world: World, file_id: str, to: Peer) -> None:
    """Start a download, read its headers and 1 MiB, then reset the
    connection: a client that goes away mid-body."""
    key = world.keys["client"]
    async with connection(to) as (reader, writer):
        writer.write(request_head("GET", f"/v1/files/{file_id}", bearer(key)))
        await writer.drain()
        async with asyncio.timeout(10):
            head = await reader.readuntil(b"\r\n\r\n")
            assert head.startswith(b"HTTP/1.1 200"), head
            await reader.readexactly(1 << 20)
        writer.transport.abort()


#: Far more than socket buffers hold, so the cut lands mid-body.
BIG = 24 << 20


@contextlib.asynccontextmanager
async def serving(world: World, server: str) -> AsyncIterator[Peer]:
    if server == "test-server":
        yield world.gw
    else:
        async with production_server(world.gw) as address:
            yield address


SERVERS = ["test-server", "production-runner"]


@pytest.mark.parametrize("server", SERVERS)
async def test_interrupted_last_download_still_deletes_the_file(world: World, server: str) -> None:
    """A file limited to one download, whose download the client cuts
    mid-body: the download was counted, so the file can never be read
    again, and it is deleted as a completed last download would be (crypto-
    erased, blob removed, ``purged`` with a ``max_downloads`` record) rather
    than left stored until its expiry. The next pass signs the record into
    a checkpoint, and the owner gets a receipt. On both servers: the test
    server cancels the handler of a client that left (this used to skip the
    deletion), the production runner lets it run into a failed write."""
    gw = world.gw
    meta = await gw.upload(os.urandom(BIG), params={"max_downloads": "1"})
    file_id = meta["id"]
    name = ids.blob_name(ids.from_text(file_id))
    assert name in (await inventory(gw)).blobs
    async with serving(world, server) as peer:
        await _cut_download(world, file_id, peer)
        await _settled(world, file_id)
    assert name not in (await inventory(gw)).blobs
    keys = await db.scalar(
        gw.services, "SELECT count(*) FROM file_keys WHERE file_id = :f", f=ids.from_text(file_id)
    )
    assert keys == 0
    resp = await gw.client.post("/v1/purge/run", headers=await gw.auth("acme", Role.OPERATOR))
    assert resp.status == 200
    receipt = await send(world, "GET", f"/v1/files/{file_id}/receipt", bearer(world.keys["client"]))
    assert receipt.status == 200, receipt.body
    records = await gw.services.metadata.audit.records(0, 10_000)
    assert [r.reason for r in records if r.file_id == file_id] == ["max_downloads"]
    again = await send(world, "GET", f"/v1/files/{file_id}", bearer(world.keys["client"]))
    check_problem(again.status, again.headers, again.body, 410)


@pytest.mark.parametrize("server", SERVERS)
async def test_interrupted_download_below_the_limit_keeps_the_file(
    world: World, server: str
) -> None:
    """A cut download that is not the last allowed one only counts: the file
    stays, the next (complete) download reads it whole and, being the last,
    deletes it."""
    data = os.urandom(BIG)
    meta = await world.gw.upload(data, params={"max_downloads": "2"})
    async with serving(world, server) as peer:
        await _cut_download(world, meta["id"], peer)
    assert await _state(world, meta["id"]) == "active"
    answer = await send(world, "GET", f"/v1/files/{meta['id']}", bearer(world.keys["client"]))
    assert answer.status == 200 and answer.body == data
    await _settled(world, meta["id"])
