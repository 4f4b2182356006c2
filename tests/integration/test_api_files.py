"""The HTTP API for files, end to end through a real aiohttp server."""

from __future__ import annotations

import asyncio
import base64
import hashlib
import io
import os
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from filestore.api.openapi import openapi_document
from filestore.crypto import CHUNK_SIZE
from filestore.metadata.base import Role
from tests.support import db
from tests.support.db import MetadataBackend
from tests.support.gateway import Gateway, running_gateway

PROBLEM = "application/problem+json"


async def assert_problem(resp: aiohttp.ClientResponse, status: int, slug: str) -> dict[str, object]:
    assert resp.status == status, await resp.text()
    assert resp.content_type == PROBLEM
    body = await resp.json(content_type=PROBLEM)
    assert body["type"] == f"urn:filestore:problem:{slug}"
    assert body["status"] == status
    assert "request_id" in body
    return body  # type: ignore[no-any-return]


@pytest.mark.parametrize(
    "size", [0, 1, CHUNK_SIZE - 1, CHUNK_SIZE, CHUNK_SIZE + 1, 3 * (1 << 20) + 7]
)
async def test_raw_round_trip(gateway: Gateway, size: int) -> None:
    data = os.urandom(size)
    meta = await gateway.upload(
        data, params={"filename": "report.pdf"}, headers={"Content-Type": "application/pdf"}
    )
    assert meta["size"] == size
    assert meta["sha256"] == hashlib.sha256(data).hexdigest()
    assert meta["url"].endswith(f"/v1/files/{meta['id']}")
    assert meta["expires_at"].endswith("Z")
    resp = await gateway.get(meta["id"])
    assert resp.status == 200
    assert await resp.read() == data
    assert resp.headers["Content-Type"] == "application/pdf"
    assert resp.headers["Cache-Control"] == "no-store"
    assert resp.headers["X-Content-Type-Options"] == "nosniff"
    assert resp.headers["ETag"] == f'"{meta["id"]}"'
    assert resp.headers["Content-Length"] == str(size)
    assert 'filename="report.pdf"' in resp.headers["Content-Disposition"]


async def test_empty_uploads_one_after_another(gateway: Gateway) -> None:
    """Every empty body in a process is read through the same shared reader
    of aiohttp's, which reports the end differently once it has been read:
    the second and third empty upload must end as the first did."""
    for _ in range(3):
        meta = await gateway.upload(b"")
        assert meta["size"] == 0
        resp = await gateway.get(meta["id"])
        assert resp.status == 200
        assert await resp.read() == b""


async def test_upload_location_and_chunked_body(gateway: Gateway) -> None:
    data = os.urandom(200_000)

    async def gen():  # type: ignore[no-untyped-def]
        for i in range(0, len(data), 7000):
            yield data[i : i + 7000]

    resp = await gateway.client.post("/v1/files", data=gen(), headers=await gateway.auth())
    assert resp.status == 201
    meta = await resp.json()
    assert resp.headers["Location"] == f"/v1/files/{meta['id']}"
    assert await (await gateway.get(meta["id"])).read() == data


async def test_multipart_upload(gateway: Gateway) -> None:
    data = os.urandom(100_000)
    # As curl -F sends it: the UTF-8 name raw in filename="...".
    boundary = "----filestore-test-boundary"
    form = (
        (
            f'--{boundary}\r\nContent-Disposition: form-data; name="note"\r\n\r\nignored\r\n'
            f'--{boundary}\r\nContent-Disposition: form-data; name="file"; '
            f'filename="Résumé 2026.txt"\r\nContent-Type: text/plain\r\n\r\n'
        ).encode()
        + data
        + f"\r\n--{boundary}--\r\n".encode()
    )
    resp = await gateway.client.post(
        "/v1/files",
        data=io.BytesIO(form),
        headers={
            **(await gateway.auth()),
            "Content-Type": f"multipart/form-data; boundary={boundary}",
        },
    )
    assert resp.status == 201, await resp.text()
    meta = await resp.json()
    assert meta["filename"] == "Résumé 2026.txt"
    assert meta["content_type"] == "text/plain"
    assert meta["size"] == len(data)
    got = await gateway.get(meta["id"])
    assert await got.read() == data
    disposition = got.headers["Content-Disposition"]
    assert "filename*=UTF-8''R%C3%A9sum%C3%A9%202026.txt" in disposition
    assert 'filename="R_sum_ 2026.txt"' in disposition


async def test_multipart_without_file_part(gateway: Gateway) -> None:
    form = aiohttp.FormData(default_to_multipart=True)
    form.add_field("note", "no file here")
    resp = await gateway.client.post("/v1/files", data=form(), headers=await gateway.auth())
    await assert_problem(resp, 400, "bad-request")
    assert gateway.blob_files() == []


async def test_malformed_multipart(gateway: Gateway) -> None:
    resp = await gateway.client.post(
        "/v1/files",
        data=b"this is not a form",
        headers={**(await gateway.auth()), "Content-Type": "multipart/form-data; boundary=xyz"},
    )
    await assert_problem(resp, 400, "bad-request")
    assert gateway.blob_files() == []


@pytest.mark.parametrize(
    "ending",
    [
        "\r\n--{b}\r\n",  # a part boundary, then nothing: no closing boundary
        "\r\n--{b}",  # cut inside the boundary line
        '\r\n--{b}\r\nContent-Disposition: form-data; name="x"\r\n\r\nmore',
        "",  # cut inside the file's own bytes
    ],
    ids=["after-part-boundary", "in-boundary", "in-next-part", "in-file-data"],
)
async def test_truncated_multipart_is_refused_and_leaves_nothing(
    gateway: Gateway, ending: str
) -> None:
    """A form whose body ends before its closing boundary is not a whole
    file, however complete the file part looks (found by the hostile-input
    battery: it used to be stored, 201)."""
    b = "cut-boundary-31"
    form = (
        f'--{b}\r\nContent-Disposition: form-data; name="file"; filename="a.bin"\r\n\r\n'.encode()
        + os.urandom(50_000)
        + ending.format(b=b).encode()
    )
    resp = await gateway.client.post(
        "/v1/files",
        data=io.BytesIO(form),
        headers={**(await gateway.auth()), "Content-Type": f"multipart/form-data; boundary={b}"},
    )
    await assert_problem(resp, 400, "bad-request")
    assert gateway.blob_files() == []
    assert await _file_rows(gateway) == 0


async def test_fields_after_the_file_are_read_to_the_closing_boundary(gateway: Gateway) -> None:
    b = "trailing-fields-7"
    data = os.urandom(20_000)
    tail = "".join(
        f'\r\n--{b}\r\nContent-Disposition: form-data; name="f{i}"\r\n\r\nv{i}' for i in range(3)
    )
    form = (
        f'--{b}\r\nContent-Disposition: form-data; name="file"; filename="a.bin"\r\n\r\n'.encode()
        + data
        + (tail + f"\r\n--{b}--\r\n").encode()
    )
    resp = await gateway.client.post(
        "/v1/files",
        data=io.BytesIO(form),
        headers={**(await gateway.auth()), "Content-Type": f"multipart/form-data; boundary={b}"},
    )
    assert resp.status == 201, await resp.text()
    assert await (await gateway.get((await resp.json())["id"])).read() == data


async def test_multipart_from_aiohttp_client(gateway: Gateway) -> None:
    form = aiohttp.FormData()
    form.add_field("file", io.BytesIO(b"abc" * 1000), filename="plain.csv", content_type="text/csv")
    resp = await gateway.client.post("/v1/files", data=form, headers=await gateway.auth())
    assert resp.status == 201
    meta = await resp.json()
    assert (meta["filename"], meta["content_type"], meta["size"]) == ("plain.csv", "text/csv", 3000)


async def test_filename_from_content_disposition(gateway: Gateway) -> None:
    meta = await gateway.upload(
        b"x", headers={"Content-Disposition": "attachment; filename*=UTF-8''%E6%97%A5%E6%9C%AC.txt"}
    )
    assert meta["filename"] == "日本.txt"


@pytest.mark.parametrize(
    ("first", "last"),
    [
        (0, 0),
        (CHUNK_SIZE - 1, CHUNK_SIZE),
        (CHUNK_SIZE, 2 * CHUNK_SIZE - 1),
        (5, 3 * CHUNK_SIZE + 17),
        (70 * CHUNK_SIZE - 3, 70 * CHUNK_SIZE + 3),  # across a 1 MiB batch edge
        (0, 100 * CHUNK_SIZE + 99),
        (100 * CHUNK_SIZE + 99, 100 * CHUNK_SIZE + 99),
    ],
)
async def test_ranges(gateway: Gateway, first: int, last: int) -> None:
    data = os.urandom(100 * CHUNK_SIZE + 100)
    meta = await gateway.upload(data)
    resp = await gateway.get(meta["id"], headers={"Range": f"bytes={first}-{last}"})
    assert resp.status == 206
    assert await resp.read() == data[first : last + 1]
    assert resp.headers["Content-Range"] == f"bytes {first}-{last}/{len(data)}"


async def test_suffix_range_and_if_range(gateway: Gateway) -> None:
    data = os.urandom(50_000)
    meta = await gateway.upload(data)
    resp = await gateway.get(meta["id"], headers={"Range": "bytes=-10"})
    assert resp.status == 206 and await resp.read() == data[-10:]
    stale = await gateway.get(meta["id"], headers={"Range": "bytes=0-9", "If-Range": '"other"'})
    assert stale.status == 200 and await stale.read() == data
    etag = resp.headers["ETag"]
    cond = await gateway.get(meta["id"], headers={"If-None-Match": etag})
    assert cond.status == 304


async def test_unsatisfiable_range(gateway: Gateway) -> None:
    meta = await gateway.upload(b"0123456789")
    resp = await gateway.get(meta["id"], headers={"Range": "bytes=10-"})
    await assert_problem(resp, 416, "range-not-satisfiable")
    assert resp.headers["Content-Range"] == "bytes */10"


async def test_head(gateway: Gateway) -> None:
    meta = await gateway.upload(b"hello", params={"filename": "a.txt"})
    resp = await gateway.client.head(f"/v1/files/{meta['id']}", headers=await gateway.auth())
    assert resp.status == 200
    assert resp.headers["Content-Length"] == "5"
    assert resp.headers["X-Checksum-SHA256"] == hashlib.sha256(b"hello").hexdigest()
    assert "X-Expires-At" in resp.headers and "Expires" in resp.headers


async def test_size_limit_leaves_nothing(tmp_path: Path, metadata_backend: MetadataBackend) -> None:
    async with running_gateway(
        tmp_path, max_file_size=100_000, database_url=metadata_backend.url
    ) as gw:
        resp = await gw.client.post(
            "/v1/files", data=io.BytesIO(os.urandom(300_000)), headers=await gw.auth()
        )
        await assert_problem(resp, 413, "too-large")
        assert gw.blob_files() == []
        assert await _file_rows(gw) == 0
        ok = await gw.upload(os.urandom(100_000))
        assert ok["size"] == 100_000


async def _file_rows(gw: Gateway) -> int:
    files = await db.scalar(gw.services, "SELECT count(*) FROM files")
    keys = await db.scalar(gw.services, "SELECT count(*) FROM file_keys")
    return int(files + keys)


@pytest.mark.parametrize("header", ["Content-Digest", "X-Checksum-SHA256"])
async def test_checksum(gateway: Gateway, header: str) -> None:
    data = os.urandom(40_000)
    digest = hashlib.sha256(data).digest()
    good = (
        f"sha-256=:{base64.b64encode(digest).decode()}:"
        if header == "Content-Digest"
        else digest.hex()
    )
    meta = await gateway.upload(data, headers={header: good})
    assert meta["sha256"] == digest.hex()
    rows = await _file_rows(gateway)
    blobs = gateway.blob_files()
    resp = await gateway.client.post(
        "/v1/files", data=data + b"!", headers={**(await gateway.auth()), header: good}
    )
    await assert_problem(resp, 422, "checksum-mismatch")
    assert gateway.blob_files() == blobs
    assert await _file_rows(gateway) == rows


@pytest.mark.parametrize(
    ("params", "headers"),
    [
        ({"ttl": "forever"}, {}),
        ({"ttl": "25h"}, {}),
        ({"ttl": "0"}, {}),
        ({"max_downloads": "0"}, {}),
        ({"max_downloads": "-1"}, {}),
        ({"filename": "../etc/passwd"}, {}),
        ({"filename": "a\\b"}, {}),
        ({"filename": "bell\x07"}, {}),
        ({"filename": "x" * 256}, {}),
        ({"colour": "red"}, {}),
        ({}, {"X-Checksum-SHA256": "abc"}),
        ({}, {"Content-Digest": "md5=:AAAA:"}),
        ({}, {"Content-Type": "not a type"}),
    ],
)
async def test_bad_upload_options(
    gateway: Gateway, params: dict[str, str], headers: dict[str, str]
) -> None:
    resp = await gateway.client.post(
        "/v1/files", data=b"data", params=params, headers={**(await gateway.auth()), **headers}
    )
    await assert_problem(resp, 400, "bad-request")
    assert gateway.blob_files() == []
    assert await _file_rows(gateway) == 0


async def test_expiry_is_read_from_the_clock(gateway: Gateway) -> None:
    meta = await gateway.upload(b"short-lived", params={"ttl": "1m"})
    gateway.clock.advance(59.9)
    assert (await gateway.get(meta["id"])).status == 200
    gateway.clock.advance(0.1)
    await assert_problem(await gateway.get(meta["id"]), 410, "gone")
    head = await gateway.client.head(f"/v1/files/{meta['id']}", headers=await gateway.auth())
    assert head.status == 410


async def test_default_and_max_ttl(gateway: Gateway) -> None:
    meta = await gateway.upload(b"x")
    default = await gateway.upload(b"x", params={"ttl": "86280"})
    assert meta["expires_at"] < default["expires_at"]


async def test_tenant_isolation(gateway: Gateway) -> None:
    meta = await gateway.upload(b"secret", tenant="acme")
    fid = meta["id"]
    other = await gateway.auth("globex")
    for method in ("GET", "HEAD", "DELETE"):
        resp = await gateway.client.request(method, f"/v1/files/{fid}", headers=other)
        assert resp.status == 404, method
    assert (await gateway.get(fid)).status == 200


async def test_auth(gateway: Gateway) -> None:
    meta = await gateway.upload(b"x")
    url = f"/v1/files/{meta['id']}"
    body = await assert_problem(await gateway.client.get(url), 401, "unauthorized")
    assert "Bearer" in str(body["detail"])
    for token in ("Bearer nope", "Basic abc", "Bearer fs_000000000000_" + "A" * 43):
        resp = await gateway.client.get(url, headers={"Authorization": token})
        await assert_problem(resp, 401, "unauthorized")
        assert resp.headers["WWW-Authenticate"].startswith("Bearer")
    ops = await gateway.auth("acme", Role.OPERATOR)
    await assert_problem(await gateway.client.get(url, headers=ops), 403, "forbidden")
    key = await gateway.key()
    key_id = key.split("_")[1]
    assert await gateway.services.metadata.api_keys.revoke(key_id, gateway.clock.now())
    await assert_problem(await gateway.get(meta["id"]), 401, "unauthorized")


async def test_delete(gateway: Gateway) -> None:
    data = os.urandom(50_000)
    meta = await gateway.upload(data)
    assert len(gateway.blob_files()) == 1
    resp = await gateway.client.delete(f"/v1/files/{meta['id']}", headers=await gateway.auth())
    assert resp.status == 204
    assert gateway.blob_files() == []
    await assert_problem(await gateway.get(meta["id"]), 410, "gone")
    again = await gateway.client.delete(f"/v1/files/{meta['id']}", headers=await gateway.auth())
    await assert_problem(again, 410, "gone")
    assert await db.scalar(gateway.services, "SELECT count(*) FROM file_keys") == 0
    assert await db.rows(gateway.services, "SELECT state, delete_reason, sealed FROM files") == [
        ("purged", "client_request", None)
    ]


async def test_max_downloads(gateway: Gateway) -> None:
    meta = await gateway.upload(b"once", params={"max_downloads": "1"})
    first = await gateway.get(meta["id"])
    assert first.status == 200 and await first.read() == b"once"
    await assert_problem(await gateway.get(meta["id"]), 410, "gone")
    assert gateway.blob_files() == []


@pytest.mark.parametrize("path", ["/v1/files/abc", "/v1/files/" + "A" * 22, "/nope"])
async def test_unknown_things_are_problem_404(gateway: Gateway, path: str) -> None:
    await assert_problem(
        await gateway.client.get(path, headers=await gateway.auth()), 404, "not-found"
    )


async def test_wrong_method_is_problem_405(gateway: Gateway) -> None:
    resp = await gateway.client.put("/v1/files", headers=await gateway.auth())
    await assert_problem(resp, 405, "method-not-allowed")


async def test_at_rest_nothing_in_clear(
    gateway: Gateway, metadata_backend: MetadataBackend
) -> None:
    marker = b"PLAINTEXT-MARKER-" * 4000
    name = "very-private-name-4711.docx"
    await gateway.upload(marker, params={"filename": name})
    (blob,) = gateway.blob_files()
    stored = blob.read_bytes()
    assert b"PLAINTEXT-MARKER" not in stored
    assert hashlib.sha256(marker).hexdigest().encode() not in stored
    files = metadata_backend.files()
    if files is None:
        pytest.skip("the database's files are on an external server")
    assert files
    for path in files:
        content = path.read_bytes()
        assert name.encode() not in content, path.name
        assert hashlib.sha256(marker).hexdigest().encode() not in content, path.name


def _flip(path: Path, offset: int) -> None:
    data = bytearray(path.read_bytes())
    data[offset] ^= 0x01
    path.write_bytes(bytes(data))


async def test_tampered_first_chunk_fails_before_headers(gateway: Gateway) -> None:
    meta = await gateway.upload(os.urandom(3 * (1 << 20)))
    (blob,) = gateway.blob_files()
    _flip(blob, 88 + 10)
    await assert_problem(await gateway.get(meta["id"]), 500, "integrity")


async def test_tampered_final_chunk_fails_before_headers(gateway: Gateway) -> None:
    meta = await gateway.upload(os.urandom(3 * (1 << 20) + 5))
    (blob,) = gateway.blob_files()
    _flip(blob, blob.stat().st_size - 3)
    await assert_problem(await gateway.get(meta["id"]), 500, "integrity")


async def test_truncated_blob_fails_before_headers(gateway: Gateway) -> None:
    meta = await gateway.upload(os.urandom(100_000))
    (blob,) = gateway.blob_files()
    blob.write_bytes(blob.read_bytes()[:-16400])
    await assert_problem(await gateway.get(meta["id"]), 500, "integrity")


@pytest.mark.parametrize("offset", [88 + 10, 88 + 16400 + 7, -3], ids=["first", "middle", "final"])
async def test_small_file_damaged_anywhere_fails_before_headers(
    gateway: Gateway, offset: int
) -> None:
    """A small file's blob is read and decrypted whole at open: damage in any
    chunk, a middle one too, is a 500 before the response starts."""
    meta = await gateway.upload(os.urandom(40_000))  # three chunks
    (blob,) = gateway.blob_files()
    _flip(blob, offset % blob.stat().st_size)
    await assert_problem(await gateway.get(meta["id"]), 500, "integrity")


@pytest.mark.parametrize("size", [70_000, 1 << 20])
async def test_small_download_reads_its_blob_once(
    gateway: Gateway, monkeypatch: pytest.MonkeyPatch, size: int
) -> None:
    data = os.urandom(size)
    meta = await gateway.upload(data)
    blobs = gateway.services.blobs
    calls: list[str] = []
    for method in ("get", "read", "size"):
        real = getattr(blobs, method)

        def spy(*args: Any, _real: Any = real, _method: str = method, **kwargs: Any) -> Any:
            calls.append(_method)
            return _real(*args, **kwargs)

        monkeypatch.setattr(blobs, method, spy)
    resp = await gateway.get(meta["id"])
    assert resp.status == 200 and await resp.read() == data
    ranged = await gateway.get(meta["id"], headers={"Range": "bytes=20000-20009"})
    assert ranged.status == 206 and await ranged.read() == data[20000:20010]
    assert calls == ["get", "get"]


async def test_tampered_middle_chunk_aborts_the_body(gateway: Gateway) -> None:
    data = os.urandom(3 * (1 << 20))
    meta = await gateway.upload(data)
    (blob,) = gateway.blob_files()
    _flip(blob, 88 + 100 * 16400 + 5)  # inside the second 1 MiB batch
    resp = await gateway.get(meta["id"])
    assert resp.status == 200
    with pytest.raises(aiohttp.ClientPayloadError):
        await resp.read()


async def test_health_and_openapi(gateway: Gateway) -> None:
    assert (await gateway.client.get("/healthz")).status == 200
    ready = await gateway.client.get("/readyz")
    assert ready.status == 200
    assert (await ready.json())["checks"] == {
        "database": "ok",
        "storage": "ok",
        "keys": "ok",
        "clock": "ok",
    }
    # The document is served as is; that it describes exactly the routes is
    # tests/unit/test_openapi_spec.py's, that answers keep to it
    # tests/fuzz/test_schemathesis.py's.
    doc = await (await gateway.client.get("/openapi.json")).json()
    assert doc == openapi_document()


async def test_readyz_reports_failing_storage(gateway: Gateway) -> None:
    import shutil

    shutil.rmtree(gateway.settings.storage_dir)
    gateway.settings.storage_dir.write_text("not a directory")
    resp = await gateway.client.get("/readyz")
    assert resp.status == 503
    assert (await resp.json())["checks"]["storage"] == "failing"
    assert resp.headers["Retry-After"]


async def test_signed_link(gateway: Gateway) -> None:
    data = os.urandom(70_000)
    meta = await gateway.upload(data, params={"ttl": "2h"})
    resp = await gateway.client.post(
        f"/v1/files/{meta['id']}/links", params={"ttl": "10m"}, headers=await gateway.auth()
    )
    assert resp.status == 201
    link = await resp.json()
    url = aiohttp.client.URL(link["url"])
    path_qs = url.raw_path_qs
    assert url.query["expires"] == str(int(gateway.clock.now() + 600))
    # No API key needed; ranges work through the link too.
    got = await gateway.client.get(path_qs)
    assert got.status == 200 and await got.read() == data
    part = await gateway.client.get(path_qs, headers={"Range": "bytes=10-19"})
    assert await part.read() == data[10:20]
    # Tampered signature, other file, altered expiry: refused.
    sig = url.query["signature"]
    forged = sig[:-2] + ("AA" if not sig.endswith("AA") else "BB")
    for query in (
        {"expires": url.query["expires"], "signature": forged},
        {"expires": str(int(url.query["expires"]) + 3600), "signature": sig},
        {"expires": "soon", "signature": sig},
    ):
        bad = await gateway.client.get(f"/v1/files/{meta['id']}", params=query)
        await assert_problem(bad, 404, "not-found")
    other = await gateway.upload(b"other file")
    await assert_problem(
        await gateway.client.get(f"/v1/files/{other['id']}", params=dict(url.query)),
        404,
        "not-found",
    )
    # A forged link to an id that does not exist looks the same.
    missing = await gateway.client.get("/v1/files/AAAAAAAAAAAAAAAAAAAAAA", params=dict(url.query))
    await assert_problem(missing, 404, "not-found")
    # The link dies at its own expiry.
    gateway.clock.advance(600)
    await assert_problem(await gateway.client.get(path_qs), 404, "not-found")


async def test_signed_link_never_outlives_the_file(gateway: Gateway) -> None:
    meta = await gateway.upload(b"short", params={"ttl": "60"})
    resp = await gateway.client.post(
        f"/v1/files/{meta['id']}/links", params={"ttl": "5h"}, headers=await gateway.auth()
    )
    link = await resp.json()
    assert link["expires_at"] <= meta["expires_at"]
    path_qs = aiohttp.client.URL(link["url"]).raw_path_qs
    gateway.clock.advance(59)
    assert (await gateway.client.get(path_qs)).status == 200
    gateway.clock.advance(1)
    got = await gateway.client.get(path_qs)
    assert got.status in (404, 410)
    # Deleting the file kills the link even before its expiry.
    meta2 = await gateway.upload(b"to delete", params={"ttl": "1h"})
    link2 = await (
        await gateway.client.post(f"/v1/files/{meta2['id']}/links", headers=await gateway.auth())
    ).json()
    await gateway.client.delete(f"/v1/files/{meta2['id']}", headers=await gateway.auth())
    gone = await gateway.client.get(aiohttp.client.URL(link2["url"]).raw_path_qs)
    await assert_problem(gone, 410, "gone")


async def test_link_creation_needs_the_owner(gateway: Gateway) -> None:
    meta = await gateway.upload(b"mine")
    resp = await gateway.client.post(
        f"/v1/files/{meta['id']}/links", headers=await gateway.auth("globex")
    )
    await assert_problem(resp, 404, "not-found")
    resp = await gateway.client.post(f"/v1/files/{meta['id']}/links")
    await assert_problem(resp, 401, "unauthorized")
    resp = await gateway.client.post(
        f"/v1/files/{meta['id']}/links", params={"ttl": "-5"}, headers=await gateway.auth()
    )
    await assert_problem(resp, 400, "bad-request")


async def test_download_in_flight_is_cut_after_the_grace(gateway: Gateway) -> None:
    # Big enough that socket buffers cannot hold what is left when it is cut.
    data = os.urandom(24 * (1 << 20))
    meta = await gateway.upload(data, params={"ttl": "60"})
    gateway.clock.advance(59)
    resp = await gateway.get(meta["id"])
    assert resp.status == 200
    first = await resp.content.readexactly(1 << 20)
    assert first == data[: 1 << 20]
    # Expiry passes while streaming: within the grace the stream goes on ...
    gateway.clock.advance(gateway.settings.download_grace / 2)
    await resp.content.readexactly(1 << 20)
    # ... past expiry + grace it is cut, never ended cleanly.
    gateway.clock.advance(gateway.settings.download_grace)
    with pytest.raises((aiohttp.ClientPayloadError, asyncio.IncompleteReadError)):
        await resp.content.readexactly(len(data) - (2 << 20))
    # And no new read starts after expiry.
    await assert_problem(await gateway.get(meta["id"]), 410, "gone")


async def _head_exchange(gateway: Gateway, raw: bytes) -> bytes:
    server = gateway.client.server
    reader, writer = await asyncio.open_connection(server.host, server.port)
    try:
        writer.write(raw)
        await writer.drain()
        async with asyncio.timeout(5):
            return await reader.readuntil(b"\r\n\r\n")
    finally:
        writer.close()


async def test_expect_continue_refuses_before_the_body(gateway: Gateway) -> None:
    """With Expect: 100-continue a doomed upload is refused before a single
    body byte is sent: a bad key (401) or a declared size over the limit (413)."""
    key = await gateway.key()

    def request(auth: str, length: int) -> bytes:
        return (
            f"POST /v1/files HTTP/1.1\r\nHost: t\r\nAuthorization: {auth}\r\n"
            f"Content-Length: {length}\r\nExpect: 100-continue\r\n\r\n"
        ).encode()

    head = await _head_exchange(gateway, request("Bearer nope", 10))
    assert head.startswith(b"HTTP/1.1 401") and b"application/problem+json" in head
    too_big = gateway.settings.max_file_size + 1
    head = await _head_exchange(gateway, request(f"Bearer {key}", too_big))
    assert head.startswith(b"HTTP/1.1 413")
    head = await _head_exchange(gateway, request(f"Bearer {key}", 10))
    assert head.startswith(b"HTTP/1.1 100 Continue")


async def test_a_stalled_reader_is_cut_off(
    tmp_path: Path, metadata_backend: MetadataBackend
) -> None:
    """A client that stops reading mid-download does not hold the stream
    (and the blob's bytes) open: after the idle timeout the server aborts."""
    async with running_gateway(tmp_path, database_url=metadata_backend.url, read_timeout=0.3) as gw:
        data = os.urandom(32 * (1 << 20))
        meta = await gw.upload(data)
        resp = await gw.get(meta["id"])
        assert resp.status == 200
        await resp.content.readexactly(1 << 20)
        await asyncio.sleep(1.5)  # stop reading for well over the idle timeout
        with pytest.raises((aiohttp.ClientPayloadError, asyncio.IncompleteReadError)):
            async with asyncio.timeout(10):
                await resp.content.readexactly(len(data) - (1 << 20))
