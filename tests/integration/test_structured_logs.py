"""FILESTORE_LOG_FORMAT=json: every log line is one JSON object, and the
access log's fields say what happened without a token, a file name, a query
string or a concrete file id.

Two gateways: one in this process (the same app, access logger and logging
set-up as ``filestore serve``, on SQLite and on PostgreSQL), whose lines are
captured as written; and a real ``filestore serve`` process whose every
output line is read back.
"""

from __future__ import annotations

import asyncio
import io
import json
import logging
import os
import re
import secrets
import urllib.error
import urllib.request
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from aiohttp.test_utils import TestClient, TestServer

from filestore import logs
from filestore.api.access_log import AccessLogger
from filestore.api.app import create_app
from filestore.api.request_info import sane_request_id
from filestore.auth import create_key
from filestore.clock import ManualClock
from filestore.config import Settings
from filestore.metadata.base import Role
from filestore.services import open_services
from tests.support.db import MetadataBackend
from tests.support.standalone import standalone_server

ACCESS_FIELDS = {
    "time": str,
    "level": str,
    "logger": str,
    "message": str,
    "request_id": str,
    "route": (str, type(None)),
    "method": str,
    "status": int,
    "bytes": int,
    "duration_seconds": float,
    "tenant": (str, type(None)),
}
TIME = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z$")


@dataclass
class Logged:
    client: TestClient[Any, Any]
    stream: io.StringIO

    def lines(self) -> list[str]:
        return self.stream.getvalue().splitlines()

    def records(self) -> list[dict[str, Any]]:
        out = []
        for line in self.lines():
            doc = json.loads(line)  # every line is one JSON object
            assert isinstance(doc, dict), line
            out.append(doc)
        return out

    def access(self) -> list[dict[str, Any]]:
        return [r for r in self.records() if r["logger"] == "filestore.access"]


@pytest.fixture
async def logged(tmp_path: Path, metadata_backend: MetadataBackend) -> AsyncIterator[Logged]:
    """A gateway logging the way ``filestore serve --log-format json`` does,
    into a buffer; the logging set-up is undone afterwards."""
    settings = Settings.load(
        env={}, data_dir=tmp_path / "data", database_url=metadata_backend.url, log_format="json"
    )
    stream = io.StringIO()
    root = logging.getLogger()
    level = root.level
    logs.configure("INFO", settings.log_format, stream)
    try:
        async with open_services(settings, ManualClock()) as services:
            server = TestServer(create_app(settings, services=services))
            await server.start_server(
                access_log_class=AccessLogger, access_log=logging.getLogger("filestore.access")
            )
            async with TestClient(server) as client:
                yield Logged(client, stream)
    finally:
        for handler in [h for h in root.handlers if isinstance(h, logs._Handler)]:
            root.removeHandler(handler)
        root.setLevel(level)


def _one(
    access: list[dict[str, Any]], method: str, status: int, route: str | None
) -> dict[str, Any]:
    found = [r for r in access if (r["method"], r["status"], r["route"]) == (method, status, route)]
    assert len(found) == 1, (method, status, route, access)
    return found[0]


async def test_access_lines_carry_fields_and_nothing_secret(logged: Logged) -> None:
    client = logged.client
    app = client.server.app
    assert app is not None
    from filestore.api.context import SERVICES

    svc = app[SERVICES]
    token, _ = await create_key(svc.metadata, Role.CLIENT, "acme", svc.clock.now())
    auth = {"Authorization": f"Bearer {token}"}
    name = f"private-{secrets.token_hex(6)}.pdf"
    body = os.urandom(70_000)

    # An upload named by query and by header, under the caller's request id.
    resp = await client.post(
        "/v1/files",
        params={"filename": name, "ttl": "2h"},
        data=body,
        headers={
            **auth,
            "X-Request-Id": "trace-42.a:b",
            "Content-Disposition": f"inline; filename={name}",
        },
    )
    assert resp.status == 201, await resp.text()
    assert resp.headers["X-Request-Id"] == "trace-42.a:b"
    file_id = (await resp.json())["id"]

    # A streamed download: its id is stamped on before the body starts.
    resp = await client.get(f"/v1/files/{file_id}", headers=auth)
    assert resp.status == 200 and await resp.read() == body
    download_id = resp.headers["X-Request-Id"]
    assert re.fullmatch(r"[0-9a-f]{16}", download_id)

    # A token in the query string is not a credential, and not logged.
    resp = await client.get(f"/v1/files/{file_id}", params={"access_token": token})
    assert resp.status == 401
    # A signed link: the signature is in the query; the tenant comes from it.
    resp = await client.post(f"/v1/files/{file_id}/links", params={"ttl": "10m"}, headers=auth)
    assert resp.status == 201, await resp.text()
    link = (await resp.json())["url"]
    signature = re.search(r"signature=([^&]+)", link)
    assert signature is not None
    resp = await client.get(link[link.index("/v1/") :])
    assert resp.status == 200 and await resp.read() == body

    # Errors: an unknown file, a path no route matches (carrying the token),
    # a bad method; request ids that are not sane are replaced.
    unknown = "A" * 22
    assert (await client.get(f"/v1/files/{unknown}", headers=auth)).status == 404
    junk = await client.get(f"/v1/nothing/{token}", headers={"X-Request-Id": "x" * 65})
    assert junk.status == 404
    assert junk.headers["X-Request-Id"] != "x" * 65
    resp = await client.put("/v1/purge/status", headers={"X-Request-Id": token})
    assert resp.status == 405
    assert token not in resp.headers["X-Request-Id"]
    resp = await client.get("/healthz", headers={"X-Request-Id": "has space"})
    assert re.fullmatch(r"[0-9a-f]{16}", resp.headers["X-Request-Id"])

    access = logged.access()
    for record in access:
        for key, kind in ACCESS_FIELDS.items():
            assert isinstance(record[key], kind), (key, record)
        assert TIME.match(record["time"]) and record["level"] == "INFO"
        assert record["duration_seconds"] >= 0
    upload = _one(access, "POST", 201, "/v1/files")
    assert upload["request_id"] == "trace-42.a:b" and upload["tenant"] == "acme"
    downloads = [r for r in access if (r["method"], r["status"]) == ("GET", 200)]
    downloads = [r for r in downloads if r["route"] == "/v1/files/{id}"]
    assert len(downloads) == 2
    assert {r["tenant"] for r in downloads} == {"acme"}  # by key, and by the link
    assert all(r["bytes"] >= len(body) for r in downloads)
    assert download_id in {r["request_id"] for r in downloads}
    refused = _one(access, "GET", 401, "/v1/files/{id}")
    assert refused["tenant"] is None
    assert _one(access, "GET", 404, "/v1/files/{id}")["tenant"] == "acme"
    assert _one(access, "GET", 404, None)["request_id"] == junk.headers["X-Request-Id"]
    _one(access, "PUT", 405, None)

    text = logged.stream.getvalue()
    for needle in (token, token.split("_", 2)[2], name, file_id, unknown, signature.group(1)):
        assert needle not in text, needle
    for query in ("?", "filename=", "access_token", "signature", "expires="):
        assert query not in text, query


async def test_other_records_are_json_lines_too(logged: Logged) -> None:
    log = logging.getLogger("filestore.test")
    log.warning("two\nlines %s", "here", extra={"kek_id": 7, "level": "clash"})
    try:
        raise ValueError("boom")
    except ValueError:
        log.exception("failed")
    first, second = logged.records()[-2:]
    assert first["message"] == "two\nlines here" and first["level"] == "WARNING"
    assert first["kek_id"] == 7 and first["logger"] == "filestore.test"
    assert first["extra_level"] == "clash"
    assert "ValueError: boom" in second["exception"] and second["level"] == "ERROR"
    assert all(line.startswith("{") for line in logged.lines())


def test_a_sane_request_id() -> None:
    assert sane_request_id(["0af7651916cd43dd8448eb211c80319c"])
    assert sane_request_id(["a" * 64]) and not sane_request_id(["a" * 65])
    for bad in ("", "-x", "a b", "a/b", "é", "a\x00", "fs_0123456789ab_x"):
        assert sane_request_id([bad]) is None, bad
    assert sane_request_id(["a", "b"]) is None and sane_request_id([]) is None


def test_the_setting() -> None:
    assert Settings.load(env={}).log_format == "text"
    assert Settings.load(env={"FILESTORE_LOG_FORMAT": "JSON"}).log_format == "json"
    with pytest.raises(Exception, match="LOG_FORMAT"):
        Settings.load(env={"FILESTORE_LOG_FORMAT": "xml"})


# ------------------------------------------------------- a real process
def _http(url: str, **headers: str) -> tuple[int, bytes]:
    request = urllib.request.Request(url, headers=headers)
    try:
        with urllib.request.urlopen(request, timeout=30) as resp:
            return int(resp.status), resp.read()
    except urllib.error.HTTPError as exc:
        return int(exc.code), exc.read()


async def test_filestore_serve_writes_only_json_lines(tmp_path: Path) -> None:
    async with standalone_server(tmp_path, log_format="json", log_level="INFO") as server:
        auth = {"Authorization": f"Bearer {server.client_key}"}
        status, _ = await asyncio.to_thread(_http, f"{server.url}/v1/files/{'B' * 22}", **auth)
        assert status == 404
        status, _ = await asyncio.to_thread(
            _http, f"{server.url}/v1/purge/status?token={server.operator_key}"
        )
        assert status == 401
    lines = [line for line in server.instance.lines if line.strip()]
    # What the command prints for people (not a log record) is on stdout.
    records = [json.loads(line) for line in lines if " listening on " not in line]
    assert records and all(isinstance(r, dict) and r.keys() >= {"time", "level"} for r in records)
    access = [r for r in records if r["logger"] == "filestore.access"]
    routes = {(r["route"], r["status"]) for r in access}
    assert {("/v1/files/{id}", 404), ("/v1/purge/status", 401)} <= routes
    assert any(r["logger"] == "filestore" and r["message"] == "shutting down" for r in records)
    output = "\n".join(lines)
    assert server.operator_key not in output and server.client_key not in output
    assert "B" * 22 not in output and "token=" not in output
