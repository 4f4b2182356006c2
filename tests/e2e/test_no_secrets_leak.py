"""No secret leaks into logs, answers, metrics, audit exports or the database.

Two scenarios, each on SQLite and on PostgreSQL:

* **a real ``filestore serve`` process** (ratchet key schedule with a cluster
  secret, ``LOG_LEVEL=DEBUG``) driven over HTTP through every route with good
  and bad input — keys of every role, uploads (raw, multipart, named by query
  or by header), downloads, a ranged download, signed links, receipts, bad
  and misplaced tokens, other tenants, 404s, refused input, a blob failing
  its integrity check, deletes, purge passes, both audit exports, status,
  metrics, readiness, a ratchet hand-over — and ``filestore keys create``.
  Its own stdout and stderr are what is searched (text on SQLite, JSON lines
  on PostgreSQL);
* **an in-process gateway on a manual clock**, for what needs time to pass
  (expiry, purges of expired files, a KEK rotation and a KEK destruction),
  with every Python log record captured at DEBUG.

Then every secret the scenario knows is searched for in everything it
captured: every API token (whole, its secret part, the first 16 characters
of that), the key material read from the key files the service wrote (KEKs,
DEKs, the ratchet secret, the audit signing key, the link key, the cluster
secret; as hex, base64, url-safe base64 and a bytes repr, and as raw bytes
in binary files), every file name, content type, plaintext marker and
checksum, and every link signature. The haystacks: the logs, every response
header and body (the audit exports among them), the command's output, every
row of every table, the database's own files (SQLite file and WAL;
PostgreSQL's data directory after a checkpoint) and the blob files.

A file's name, content type and checksum may appear only in the answers
that describe that file to its owner (the upload's 201 body; the
``Content-Disposition``, ``Content-Type`` and ``X-Checksum-SHA256`` headers
of a download or HEAD), its plaintext only in a download's body, a link's
signature only in the answer that created it, and a token only where it is
handed out (the first start's ``API key:`` line, ``keys create``'s last
line). Nothing else is excused.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import hmac
import json
import logging
import os
import re
import secrets
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Collection, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

import aiohttp
import pytest
from aiohttp.test_utils import TestClient, TestServer
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from filestore import ids
from filestore.api.access_log import AccessLogger
from filestore.api.app import create_app
from filestore.auth import create_key
from filestore.clock import ManualClock
from filestore.config import Settings
from filestore.crypto.join import JoinRequest
from filestore.metadata.base import MetadataStore, Role
from filestore.metadata.sql import SQLMetadataStore
from filestore.services import open_services
from tests.support.db import MetadataBackend, rows
from tests.support.instances import Instance, Shared

HOUR = 3600.0
TABLES = (
    "files",
    "file_keys",
    "api_keys",
    "audit_log",
    "audit_checkpoints",
    "instance_passes",
    "kek_commitments",
)


# ------------------------------------------------------------------ secrets
@dataclass(frozen=True)
class Needle:
    #: What it belongs to, e.g. ``name:A`` (a place may excuse exactly this).
    ident: str
    label: str
    text: str | None = None
    #: Raw bytes, looked for in binary haystacks only.
    raw: bytes | None = None


@dataclass
class Secrets:
    needles: list[Needle] = field(default_factory=list)

    def add(self, ident: str, label: str, text: str) -> str:
        assert len(text) >= 12, f"{label} is too short to search for"
        self.needles.append(Needle(ident, label, text=text))
        return text

    def token(self, who: str, token: str) -> str:
        secret = token.split("_", 2)[2]  # fs_<id>_<secret>; the secret may hold '_'
        self.add(f"token:{who}", f"{who} token", token)
        self.add(f"token:{who}", f"{who} token's secret part", secret)
        self.add(f"token:{who}", f"{who} token's secret, first 16 characters", secret[:16])
        return token

    def key(self, name: str, raw: bytes) -> None:
        forms = {
            "hex": raw.hex(),
            "HEX": raw.hex().upper(),
            "base64": base64.b64encode(raw).decode()[:40],
            "url-safe base64": base64.urlsafe_b64encode(raw).decode()[:40],
            "bytes repr": repr(raw)[2:34],
            "bytes repr, JSON-escaped": json.dumps(repr(raw)[2:34])[1:-1],
        }
        for form, text in forms.items():
            self.needles.append(Needle(f"key:{name}", f"{name} ({form})", text=text))
        self.needles.append(Needle(f"key:{name}", f"{name} (raw bytes)", raw=raw))

    def file(self, tag: str) -> tuple[str, str, bytes]:
        """A file name, content type and body, each carrying a random marker."""
        name = self.add(f"name:{tag}", f"file {tag}'s name", f"nm{secrets.token_hex(8)}")
        ctype = self.add(f"ctype:{tag}", f"file {tag}'s content type", f"ct{secrets.token_hex(8)}")
        marker = self.add(f"plain:{tag}", f"file {tag}'s plaintext", f"pt{secrets.token_hex(12)}")
        return f"{name} report.pdf", f"application/x-{ctype}", marker.encode()

    def digest(self, tag: str, body: bytes) -> str:
        return self.add(f"digest:{tag}", f"file {tag}'s SHA-256", hashlib.sha256(body).hexdigest())


@dataclass
class Scan:
    secrets: Secrets
    found: list[str] = field(default_factory=list)
    #: How many haystacks of each kind were searched (so an empty capture fails).
    searched: dict[str, int] = field(default_factory=dict)

    def _count(self, where: str) -> None:
        kind = where.split(" ", 1)[0]
        self.searched[kind] = self.searched.get(kind, 0) + 1

    def text(self, where: str, haystack: str, allow: Collection[str] = ()) -> None:
        self._count(where)
        for n in self.secrets.needles:
            if n.text is not None and n.ident not in allow and n.text in haystack:
                at = haystack.index(n.text)
                self.found.append(f"{where}: {n.label}: …{haystack[max(0, at - 60) : at + 80]!r}…")

    def binary(self, where: str, data: bytes) -> None:
        self._count(where)
        for n in self.secrets.needles:
            hit = (n.raw is not None and n.raw in data) or (
                n.text is not None and n.text.encode() in data
            )
            if hit:
                self.found.append(f"{where}: {n.label}")

    def lines(self, where: str, lines: Iterable[str], handed_out: Collection[str] = ()) -> None:
        """Log or command output; a line equal to one of ``handed_out`` is
        where a token is given to its owner, and only that line is skipped."""
        self.text(where, "\n".join(line for line in lines if line not in handed_out))

    def check(self) -> None:
        assert not self.found, "secrets leaked:\n" + "\n".join(self.found)


# ---------------------------------------------------------------- exchanges
@dataclass
class Exchange:
    what: str
    status: int
    headers: list[tuple[str, str]]
    body: bytes
    #: ``body`` or a lowercase header name → needle idents excused there.
    allow: dict[str, set[str]] = field(default_factory=dict)

    def header(self, name: str) -> str:
        return next(v for k, v in self.headers if k.lower() == name.lower())

    def json(self) -> Any:
        return json.loads(self.body)


class Http:
    """Every request the scenario makes, with its whole answer kept."""

    def __init__(self, session: aiohttp.ClientSession | TestClient[Any, Any]) -> None:
        self.session = session
        self.exchanges: list[Exchange] = []

    async def __call__(
        self,
        method: str,
        path: str,
        expect: int,
        *,
        token: str | None = None,
        headers: dict[str, str] | None = None,
        params: dict[str, str] | None = None,
        data: Any = None,
        allow: dict[str, set[str]] | None = None,
    ) -> Exchange:
        sent = dict(headers or {})
        if token is not None:
            sent["Authorization"] = f"Bearer {token}"
        async with self.session.request(
            method, path, headers=sent, params=params, data=data, allow_redirects=False
        ) as resp:
            body = await resp.read()
            raw = [(k.decode("latin-1"), v.decode("latin-1")) for k, v in resp.raw_headers]
        ex = Exchange(f"{method} {path} -> {resp.status}", resp.status, raw, body, allow or {})
        self.exchanges.append(ex)
        assert resp.status == expect, (ex.what, body[:300])
        return ex

    def scan(self, scan: Scan) -> None:
        for ex in self.exchanges:
            for name, value in ex.headers:
                allowed = ex.allow.get(name.lower(), set())
                scan.text(f"response {ex.what} header", f"{name}: {value}", allowed)
            scan.text(
                f"response {ex.what} body", ex.body.decode("latin-1"), ex.allow.get("body", set())
            )


def described(tag: str, *, body: bool = False, plaintext: bool = False) -> dict[str, set[str]]:
    """What an answer describing file ``tag`` to its owner may show of it."""
    allow = {
        "content-disposition": {f"name:{tag}"},
        "content-type": {f"ctype:{tag}"},
        "x-checksum-sha256": {f"digest:{tag}"},
    }
    if body:  # the upload's 201: the file's info as JSON
        allow["body"] = {f"name:{tag}", f"ctype:{tag}", f"digest:{tag}"}
    if plaintext:  # a download
        allow["body"] = {f"plain:{tag}"}
    return allow


def padded(marker: bytes, size: int, at: int) -> bytes:
    """``size`` random-looking bytes with ``marker`` at offset ``at``."""
    filler = os.urandom(size).hex().encode()[:size]
    return filler[:at] + marker + filler[at + len(marker) :]


# ------------------------------------------------------------- the database
async def scan_tables(scan: Scan, store: MetadataStore) -> None:
    for table in TABLES:
        for row in await rows(store, f"SELECT * FROM {table}"):
            for value in row:
                if isinstance(value, bytes):
                    scan.binary(f"table {table}", value)
                elif isinstance(value, str):
                    scan.text(f"table {table}", value)


def scan_files(scan: Scan, kind: str, files: Iterable[Path]) -> None:
    for path in files:
        if path.is_file():
            scan.binary(f"{kind} {path.name}", path.read_bytes())


def signing_key_needles(found: Secrets, pem_path: Path) -> None:
    pem = pem_path.read_bytes()
    key = serialization.load_pem_private_key(pem, password=None)
    assert isinstance(key, Ed25519PrivateKey)
    raw = key.private_bytes(
        serialization.Encoding.Raw, serialization.PrivateFormat.Raw, serialization.NoEncryption()
    )
    found.key("audit signing key", raw)
    for line in pem.decode().splitlines():
        if not line.startswith("-----"):
            found.add("key:audit signing key", "audit signing key (PEM body)", line)


def _hkdf(secret: bytes, info: bytes) -> bytes:
    return HKDF(hashes.SHA256(), 32, None, info).derive(secret)


def ratchet_keks(path: Path, epochs: int) -> dict[int, bytes]:
    """KEKs of the oldest ``epochs`` epochs of a ratchet file, derived as
    docs/architecture.md says (checked below against the commitments)."""
    doc = json.loads(path.read_text())
    epoch, secret = int(doc["epoch"]), base64.b64decode(doc["secret"])
    keks = {}
    for e in range(epoch, epoch + epochs):
        label = e.to_bytes(4, "big")
        keks[e] = _hkdf(secret, b"filestore/v1/ratchet-kek" + label)
        secret = _hkdf(secret, b"filestore/v1/ratchet-next" + label)
    return keks


def keyring_keks(path: Path) -> dict[int, bytes]:
    doc = json.loads(path.read_text())
    return {int(k["id"]): base64.b64decode(k["key"]) for k in doc["keys"]}


def unwrap_dek(kek: bytes, kek_id: int, file_id: bytes, tenant: str, wrapped: bytes) -> bytes:
    """A wrapped DEK opened by the layouts of docs/format.md: version 2
    (tenant bound in) or the original 60-byte one."""
    if len(wrapped) == 61 and wrapped[0] == 2:
        t = tenant.encode()
        aad = b"".join(
            (
                b"filestore/v2/dek-wrap\x00",
                kek_id.to_bytes(4, "big"),
                file_id,
                len(t).to_bytes(2, "big"),
                t,
            )
        )
        return AESGCM(kek).decrypt(wrapped[1:13], wrapped[13:], aad)
    aad = b"filestore/v1/dek-wrap\x00" + kek_id.to_bytes(4, "big") + file_id
    return AESGCM(kek).decrypt(wrapped[:12], wrapped[12:], aad)


# ------------------------------------------------------ the real process
def run_commands(env: dict[str, str], *commands: list[str]) -> list[tuple[int, str, str]]:
    """``filestore`` commands run side by side; (exit code, stdout, stderr) each."""
    procs = [
        subprocess.Popen(
            [sys.executable, "-m", "filestore", *args],
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for args in commands
    ]
    results = []
    for proc in procs:
        out, err = proc.communicate(timeout=60)
        results.append((proc.returncode, out, err))
    return results


async def test_a_real_serve_process_leaks_nothing(
    tmp_path: Path, metadata_backend: MetadataBackend
) -> None:
    found = Secrets()
    scan = Scan(found)
    shared = Shared.create(
        tmp_path,
        metadata_backend.url,
        {},
        FILESTORE_LOG_LEVEL="DEBUG",
        # JSON lines (every ``extra`` field) on one run, text on the other.
        FILESTORE_LOG_FORMAT="json" if metadata_backend.name == "postgresql" else "text",
        FILESTORE_MAX_FILE_SIZE="64KiB",
    )
    instance = Instance("data", tmp_path, shared, [])
    env = shared.env(instance.data_dir, instance.port, [])
    sqlite_path = Path(metadata_backend.url.removeprefix("sqlite:///"))
    store: SQLMetadataStore | None = None
    try:
        instance.wait_ready()
        assert instance.first_key is not None
        client = found.token("client", instance.first_key)
        # Keys of every role: one through the command (its output is
        # searched too), the others straight into the service's database.
        ((code, out, err),) = run_commands(
            env, ["keys", "create", "--role", "operator", "--tenant", "ops"]
        )
        assert code == 0, err
        operator = found.token("operator", out.strip().splitlines()[-1])
        created = [("keys create", [*out.splitlines(), *err.splitlines()], {operator})]
        store = await SQLMetadataStore.open(
            metadata_backend.url, sqlite_path if metadata_backend.name == "sqlite" else None
        )
        now = time.time()
        auditor = found.token("auditor", (await create_key(store, Role.AUDITOR, "audit", now))[0])
        stranger = found.token("other", (await create_key(store, Role.CLIENT, "other", now))[0])
        doomed, doomed_record = await create_key(store, Role.CLIENT, "default", now)
        found.token("revoked", doomed)
        async with aiohttp.ClientSession(base_url=instance.url) as session:
            http = Http(session)
            await http("GET", "/v1/purge/status", 403, token=doomed)
            assert await store.api_keys.revoke(doomed_record.key_id, time.time())
            # Revoked by another process: the server may believe its cached
            # copy for up to KEY_CACHE_TTL (1 s) more, never longer.
            auth = {"Authorization": f"Bearer {doomed}"}
            for _ in range(50):
                async with session.get("/v1/purge/status", headers=auth) as resp:
                    if resp.status == 401:
                        break
                await asyncio.sleep(0.1)
            await http("GET", "/v1/files/AAAAAAAAAAAAAAAAAAAAAA", 401, token=doomed)
            await _drive_process(http, found, instance, shared, client, operator, auditor, stranger)
            await http("GET", "/v1/audit/deletions", 200, token=auditor)
    except BaseException:
        instance.stop()
        if store is not None:
            await store.close()
        raise
    assert instance.stop() == 0, "\n".join(instance.lines[-30:])
    try:
        commitments = dict(await rows(store, "SELECT kek_id, commitment FROM kek_commitments"))
        await scan_tables(scan, store)
    finally:
        await store.close()

    # Key material, from the files the service and the deployment wrote.
    keys_dir = instance.data_dir / "keys"
    keks = ratchet_keks(keys_dir / "ratchet.json", 3)
    for epoch, kek in keks.items():
        found.key(f"KEK {epoch}", kek)
    # The KEKs derived are the service's: their commitments match.
    for epoch, commitment in commitments.items():
        mac = hmac.new(keks[epoch], b"filestore/v1/ratchet-commitment", "sha256").digest()
        assert mac == commitment, f"the KEK derived for epoch {epoch} is not the service's"
    ratchet = json.loads((keys_dir / "ratchet.json").read_text())
    found.key("ratchet secret", base64.b64decode(ratchet["secret"]))
    found.key("cluster secret", (shared.secrets_dir / "cluster-secret").read_bytes())
    found.key("link key", (shared.secrets_dir / "link-signing.key").read_bytes())
    signing_key_needles(found, shared.secrets_dir / "audit-signing.pem")

    # The process's own output: DEBUG really was on, and it logged requests.
    assert any("DEBUG" in line for line in instance.lines), instance.lines[:5]
    if metadata_backend.name == "postgresql":
        assert any(line.startswith('{"time"') for line in instance.lines), instance.lines[:5]
    assert any("filestore.access" in line and "/v1/files" in line for line in instance.lines)
    scan.lines("log of filestore serve", instance.lines, {f"API key: {client}"})
    for what, lines, handed_out in created:
        scan.lines(f"output of {what}", lines, handed_out)
    http.scan(scan)
    scan_files(scan, "database-file", metadata_backend.files() or [])
    scan_files(scan, "blob", (instance.data_dir / "storage").rglob("*"))
    assert {"log", "output", "response", "table", "blob"} <= set(scan.searched)
    scan.check()


async def _drive_process(
    http: Http,
    found: Secrets,
    instance: Instance,
    shared: Shared,
    client: str,
    operator: str,
    auditor: str,
    stranger: str,
) -> None:
    # --- uploads: raw named by the query, multipart, raw named by a header
    name_a, type_a, mark_a = found.file("A")
    body_a = padded(mark_a, 3000, 1000)
    ex = await http(
        "POST",
        "/v1/files",
        201,
        token=client,
        params={"filename": name_a, "ttl": "10m"},
        headers={"Content-Type": type_a, "X-Checksum-SHA256": found.digest("A", body_a)},
        data=body_a,
        allow=described("A", body=True),
    )
    id_a = ex.json()["id"]
    assert ex.json()["filename"] == name_a  # the excused place holds it

    name_b, type_b, mark_b = found.file("B")
    body_b = padded(mark_b, 40_000, 20_000)  # three chunks; the marker in the second
    found.digest("B", body_b)
    form = aiohttp.FormData()
    form.add_field("note", "a field before the file")
    form.add_field("file", body_b, filename=name_b, content_type=type_b)
    ex = await http(
        "POST", "/v1/files", 201, token=client, data=form, allow=described("B", body=True)
    )
    id_b = ex.json()["id"]

    name_c, type_c, mark_c = found.file("C")
    body_c = padded(mark_c, 500, 100)
    digest_c = base64.b64encode(bytes.fromhex(found.digest("C", body_c))).decode()
    ex = await http(
        "POST",
        "/v1/files",
        201,
        token=client,
        params={"max_downloads": "1"},
        headers={
            "Content-Type": type_c,
            "Content-Disposition": f'attachment; filename="{name_c}"',
            "Content-Digest": f"sha-256=:{digest_c}:",
        },
        data=body_c,
        allow=described("C", body=True),
    )
    id_c = ex.json()["id"]

    # --- uploads refused: nothing of them may show anywhere
    name_x, type_x, mark_x = found.file("refused")
    await http(
        "POST", "/v1/files", 400, token=client, params={"filename": f"../{name_x}"}, data=b"x"
    )
    await http(
        "POST",
        "/v1/files",
        400,
        token=client,
        headers={"Content-Disposition": f'attachment; filename="{name_x}'},
        data=mark_x,
    )
    await http("POST", "/v1/files", 413, token=client, data=padded(mark_x, 70_000, 66_000))
    await http(
        "POST",
        "/v1/files",
        422,
        token=client,
        headers={"X-Checksum-SHA256": "0" * 64, "Content-Type": type_x},
        data=mark_x,
    )
    cut = (
        b'--xyz\r\nContent-Disposition: form-data; name="file"; filename="'
        + name_x.encode()
        + b'"\r\n\r\n'
        + mark_x
    )
    await http(
        "POST",
        "/v1/files",
        400,
        token=client,
        headers={"Content-Type": "multipart/form-data; boundary=xyz"},
        data=cut,
    )
    for params in ({"ttl": "soon"}, {"ttl": "30d"}, {"max_downloads": "0"}, {"colour": "red"}):
        await http("POST", "/v1/files", 400, token=client, params=params, data=mark_x)
    await http("POST", "/v1/files", 403, token=operator, data=mark_x)

    # --- reads
    ex = await http(
        "GET", f"/v1/files/{id_a}", 200, token=client, allow=described("A", plaintext=True)
    )
    assert ex.body == body_a and name_a in ex.header("Content-Disposition")
    await http("HEAD", f"/v1/files/{id_a}", 200, token=client, allow=described("A"))
    ex = await http(
        "GET",
        f"/v1/files/{id_b}",
        206,
        token=client,
        headers={"Range": "bytes=16000-24999"},
        allow=described("B", plaintext=True),
    )
    assert mark_b in ex.body
    await http("GET", f"/v1/files/{id_b}", 416, token=client, headers={"Range": "bytes=90000-"})
    await http(
        "GET", f"/v1/files/{id_b}", 304, token=client, headers={"If-None-Match": f'"{id_b}"'}
    )
    await http("GET", f"/v1/files/{id_c}", 200, token=client, allow=described("C", plaintext=True))
    await http("GET", f"/v1/files/{id_c}", 410, token=client)  # its one download used it up

    # --- signed links
    ex = await http(
        "POST",
        f"/v1/files/{id_a}/links",
        201,
        token=client,
        params={"ttl": "5m"},
        allow={"body": {"link:A"}},
    )
    link = parse_qs(urlsplit(ex.json()["url"]).query)
    signature = found.add("link:A", "link signature", link["signature"][0])
    query = {"expires": link["expires"][0], "signature": signature}
    await http("GET", f"/v1/files/{id_a}", 200, params=query, allow=described("A", plaintext=True))
    await http("HEAD", f"/v1/files/{id_a}", 200, params=query, allow=described("A"))
    await http("GET", f"/v1/files/{id_b}", 404, params=query)  # A's link on B
    # (The first character: the last one of 43 also carries padding bits.)
    forged = {**query, "signature": ("B" if signature[0] == "A" else "A") + signature[1:]}
    await http("GET", f"/v1/files/{id_a}", 404, params=forged)
    await http("GET", f"/v1/files/{id_a}", 404, params={**query, "expires": "9999999999"})
    await http("POST", f"/v1/files/{id_a}/links", 400, token=client, params={"ttl": "never"})

    # --- bad and misplaced tokens
    unknown = found.token("unknown", f"fs_{secrets.token_hex(6)}_{secrets.token_urlsafe(32)}")
    wrong = found.token("wrong secret", client[:16] + secrets.token_urlsafe(32))
    for bad in ("fs_bad", unknown, wrong, client + "x"):
        await http("GET", f"/v1/files/{id_a}", 401, token=bad)
    basic = base64.b64encode(f"{client}:".encode()).decode()
    for header in (f"Token {client}", f"Basic {basic}", client):
        await http("GET", f"/v1/files/{id_a}", 401, headers={"Authorization": header})
    await http("GET", f"/v1/files/{id_a}", 401, headers={"X-Api-Key": client})
    await http("GET", f"/v1/files/{id_a}", 404, token=stranger, headers={"X-Request-Id": client})
    await http("GET", f"/v1/files/{id_a}", 401, params={"access_token": client})
    await http("POST", "/v1/files", 401, params={"api_key": client}, data=mark_x)
    await http("GET", "/v1/purge/status", 401, params={"token": operator})
    await http("GET", "/v1/audit/deletions", 400, token=auditor, params={"token": auditor})
    await http("GET", "/v1/purge/status", 403, token=client)
    await http("POST", "/v1/purge/run", 403, token=auditor)
    await http("GET", "/v1/audit/deletions", 403, token=client)

    # --- another tenant, unknown ids and routes
    for method, path in (
        ("GET", f"/v1/files/{id_a}"),
        ("HEAD", f"/v1/files/{id_a}"),
        ("DELETE", f"/v1/files/{id_a}"),
        ("POST", f"/v1/files/{id_a}/links"),
        ("GET", f"/v1/files/{id_a}/receipt"),
    ):
        await http(method, path, 404, token=stranger)
    await http("GET", "/v1/files/not-an-id", 404, token=client)
    await http("GET", "/v1/files/AAAAAAAAAAAAAAAAAAAAAA", 404, token=client)
    await http("GET", "/v1/nothing-here", 404)
    await http("POST", "/healthz", 405)

    # --- a blob that fails its integrity check: a 500, and a traceback logged
    name_d, type_d, mark_d = found.file("D")
    body_d = padded(mark_d, 2000, 500)
    ex = await http(
        "POST",
        "/v1/files",
        201,
        token=client,
        params={"filename": name_d},
        headers={"Content-Type": type_d, "X-Checksum-SHA256": found.digest("D", body_d)},
        data=body_d,
        allow=described("D", body=True),
    )
    (blob,) = (instance.data_dir / "storage").rglob(ids.blob_name(ids.from_text(ex.json()["id"])))
    stored = bytearray(blob.read_bytes())
    stored[200] ^= 1
    blob.write_bytes(bytes(stored))
    await http("GET", f"/v1/files/{ex.json()['id']}", 500, token=client)

    # --- deletion, a pass, receipts
    await http("GET", f"/v1/files/{id_a}/receipt", 409, token=client)
    await http("DELETE", f"/v1/files/{id_a}", 204, token=client)
    await http("GET", f"/v1/files/{id_a}", 410, token=client)
    await http("GET", f"/v1/files/{id_a}", 410, params=query)  # the link died with it
    await http("DELETE", f"/v1/files/{id_a}", 410, token=client)
    await http("POST", "/v1/purge/run", 200, token=operator)
    for file_id in (id_a, id_c):
        await http("GET", f"/v1/files/{file_id}/receipt", 200, token=client)
    await http("GET", f"/v1/files/{id_b}/receipt", 409, token=client)

    # --- auditors and operators
    ex = await http("GET", "/v1/audit/deletions", 200, token=auditor)
    assert ex.body.count(b'"type":"record"') >= 2
    await http("GET", "/v1/audit/deletions", 200, token=auditor, params={"format": "csv"})
    await http("GET", "/v1/audit/deletions", 400, token=auditor, params={"since": name_a})
    await http("GET", "/v1/audit/checkpoint", 200, token=auditor)
    await http("GET", "/v1/audit/public-key", 200)
    await http("GET", "/v1/audit/public-key", 200, params={"format": "vkey"})
    await http("GET", "/v1/purge/status", 200, token=operator)
    ex = await http("GET", "/metrics", 200)
    assert b"filestore_purge_backlog_files" in ex.body
    for path in ("/readyz", "/healthz", "/openapi.json"):
        await http("GET", path, 200)

    # --- a ratchet hand-over, and requests that are not one
    psk = (shared.secrets_dir / "cluster-secret").read_bytes()
    join = JoinRequest.new(psk, time.time())
    ex = await http("POST", "/v1/cluster/join", 200, data=join.message)
    join.open_response(ex.body)
    await http("POST", "/v1/cluster/join", 401, data=os.urandom(90))
    await http("POST", "/v1/cluster/join", 400, data=b"\0" * 2000)


# ------------------------------------------------- time passing, in process
@pytest.fixture
async def timed_gateway(
    tmp_path: Path, metadata_backend: MetadataBackend
) -> AsyncIterator[tuple[TestClient[Any, Any], Any, ManualClock]]:
    """A gateway on a manual clock, logging requests the way ``filestore
    serve`` does (query strings left out)."""
    settings = Settings.load(env={}, data_dir=tmp_path / "data", database_url=metadata_backend.url)
    clock = ManualClock()
    async with open_services(settings, clock) as services:
        server = TestServer(create_app(settings, services=services))
        await server.start_server(
            access_log_class=AccessLogger, access_log=logging.getLogger("filestore.access")
        )
        async with TestClient(server) as client:
            yield client, services, clock


async def test_expiry_purge_and_kek_destruction_leak_nothing(
    timed_gateway: tuple[TestClient[Any, Any], Any, ManualClock],
    metadata_backend: MetadataBackend,
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.DEBUG)
    client, svc, clock = timed_gateway
    found = Secrets()
    scan = Scan(found)
    http = Http(client)
    now = clock.now()
    tenant = found.token("client", (await create_key(svc.metadata, Role.CLIENT, "acme", now))[0])
    operator = found.token("operator", (await create_key(svc.metadata, Role.OPERATOR, "o", now))[0])
    auditor = found.token("auditor", (await create_key(svc.metadata, Role.AUDITOR, "a", now))[0])
    keyring_path = svc.settings.keyring_path
    keks = keyring_keks(keyring_path)
    deks: dict[str, bytes] = {}

    async def upload(tag: str, ttl: str) -> str:
        name, ctype, mark = found.file(tag)
        body = padded(mark, 20_000, 17_000)
        found.digest(tag, body)
        ex = await http(
            "POST",
            "/v1/files",
            201,
            token=tenant,
            params={"filename": name, "ttl": ttl},
            headers={"Content-Type": ctype},
            data=body,
            allow=described(tag, body=True),
        )
        return str(ex.json()["id"])

    async def note_deks() -> None:
        keks.update(keyring_keks(keyring_path))
        for file_id, kek_id, wrapped in await rows(
            svc.metadata, "SELECT file_id, kek_id, wrapped_dek FROM file_keys"
        ):
            deks[bytes(file_id).hex()] = unwrap_dek(keks[kek_id], kek_id, file_id, "acme", wrapped)

    id_a = await upload("A", "10m")
    id_b = await upload("B", "2h")
    await note_deks()
    await http("GET", f"/v1/files/{id_a}", 200, token=tenant, allow=described("A", plaintext=True))

    # A expires: unreadable at once, purged by the next pass.
    clock.advance(11 * 60)
    await http("GET", f"/v1/files/{id_a}", 410, token=tenant)
    await http("HEAD", f"/v1/files/{id_a}", 410, token=tenant)
    await http("POST", f"/v1/files/{id_a}/links", 410, token=tenant)
    await http("POST", "/v1/purge/run", 200, token=operator)
    await http("GET", f"/v1/files/{id_a}/receipt", 200, token=tenant)

    # An hour on: a new KEK; C is wrapped under it.
    clock.advance(HOUR)
    await http("POST", "/v1/purge/run", 200, token=operator)
    id_c = await upload("C", "1h")
    await note_deks()
    assert len(keks) == 2 and len(deks) == 3

    # A day on: B and C expired and purged, the first KEK destroyed.
    clock.advance(svc.settings.kek_destroy_after + HOUR)
    await http("GET", f"/v1/files/{id_b}", 410, token=tenant)
    ex = await http("POST", "/v1/purge/run", 200, token=operator)
    assert ex.json()["pass"]["purged"] == 2
    first_kek = base64.b64encode(keks[min(keks)])
    assert first_kek not in keyring_path.read_bytes(), "the first KEK was not destroyed"
    keks.update(keyring_keks(keyring_path))  # the one the last pass rotated to
    ex = await http("GET", "/v1/audit/deletions", 200, token=auditor)
    assert b"kek_destroyed" in ex.body and ex.body.count(b'"file_deleted"') == 3
    await http("GET", "/v1/audit/deletions", 200, token=auditor, params={"format": "csv"})
    for file_id in (id_b, id_c):
        await http("GET", f"/v1/files/{file_id}/receipt", 200, token=tenant)
    await http("GET", "/v1/purge/status", 200, token=operator)
    await http("GET", "/metrics", 200)
    await http("GET", "/readyz", 200)

    for kek_id, kek in keks.items():
        found.key(f"KEK {kek_id}", kek)
    for file_hex, dek in deks.items():
        found.key(f"DEK of {file_hex}", dek)
    found.key("link key", svc.settings.link_key_path.read_bytes())
    signing_key_needles(found, svc.settings.signing_key_path)

    assert caplog.handler.level == logging.DEBUG == logging.getLogger().getEffectiveLevel()
    assert any(r.name == "filestore.access" for r in caplog.records)
    scan.text("log (Python logging at DEBUG)", caplog.text)
    http.scan(scan)
    await scan_tables(scan, svc.metadata)
    scan_files(scan, "database-file", metadata_backend.files() or [])
    scan_files(scan, "blob", svc.settings.storage_dir.rglob("*"))
    scan.check()


async def test_links_handed_out_behind_a_tls_proxy_say_https(
    timed_gateway: tuple[TestClient[Any, Any], Any, ManualClock],
) -> None:
    """A link is a credential: behind a proxy that terminated TLS, the URLs
    the service hands out must not send it (and then the file) in the clear.
    The forwarded scheme can upgrade them, never downgrade."""
    client, svc, clock = timed_gateway
    token, _ = await create_key(svc.metadata, Role.CLIENT, "acme", clock.now())
    auth = {"Authorization": f"Bearer {token}", "Host": "files.example"}
    for forwarded, scheme in (
        ("https", "https"),
        ("HTTPS", "https"),
        ("http", "http"),
        (None, "http"),
    ):
        headers = auth if forwarded is None else {**auth, "X-Forwarded-Proto": forwarded}
        resp = await client.post("/v1/files", data=b"x", headers=headers)
        assert resp.status == 201
        info = await resp.json()
        assert info["url"] == f"{scheme}://files.example/v1/files/{info['id']}"
        resp = await client.post(f"/v1/files/{info['id']}/links", headers=headers)
        assert resp.status == 201
        assert (await resp.json())["url"].startswith(f"{scheme}://files.example/v1/files/")


# ------------------------------------------------------------ the proxy
#: nginx variables that carry a query string or a credential.
LEAKY_NGINX_VARIABLES = frozenset(
    {"request", "request_uri", "args", "query_string", "http_authorization", "http_cookie"}
    | {"http_referer"}  # a browser's Referer of a signed link is the link
)


def test_the_shipped_proxy_logs_no_query_string_or_credential() -> None:
    """filestore's access log leaves query strings out; the nginx config
    that ships in front of it must too (its default format, ``combined``,
    logs ``$request`` and ``$http_referer``)."""
    conf = (Path(__file__).parents[2] / "deploy" / "nginx.conf").read_text()
    formats = dict(re.findall(r"log_format\s+(\S+)\s+((?:'[^']*'\s*)+);", conf))
    assert formats, "no log_format in deploy/nginx.conf"
    for name, spec in formats.items():
        used = set(re.findall(r"\$([a-z0-9_]+)", spec))
        leaky = used & LEAKY_NGINX_VARIABLES | {v for v in used if v.startswith("arg_")}
        assert not leaky, f"log_format {name} logs {sorted(leaky)}"
    for target, fmt in re.findall(r"^\s*access_log\s+(\S+)\s*(\S*?);", conf, re.MULTILINE):
        assert target == "off" or fmt in formats, f"access_log {target} uses the default format"
