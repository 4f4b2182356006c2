"""S3 blob store: any S3 API (AWS, MinIO, SeaweedFS, Ceph RGW, R2) via boto3.

Layout: blob ``name`` is the object ``<prefix><name>``, flat (names are random
hex, which S3 spreads well without a shard level). filestore owns the blob
names under the prefix; other keys there are ignored, never deleted.

The only module that imports boto3/botocore. Every SDK exception is
translated here: a missing object on read is :class:`NotFound`, everything
else (connection refused, timeouts, 5xx, access denied, no credentials) is
:class:`StorageUnavailable`, whose message names the operation and nothing of
the SDK's text; the S3 error code goes to the log. Credentials come from the
standard boto3 chain, never from filestore settings.

Threads: one shared client (boto3 clients are thread-safe), every call in the
store's own bounded ``ThreadPoolExecutor``, awaited through
:func:`asyncio.shield` so a cancelled caller never cuts a call half-way.
Timeouts and retries are short, so an outage surfaces within seconds.

Deletion is complete and verified: every incomplete multipart upload of the
key, every version and delete marker (where the bucket is or was
versioned), then a ``HEAD`` and a version listing must find nothing. The
purge's batches (:meth:`S3BlobStore.delete_many`) delete 1,000 keys a
``DeleteObjects`` request and take the reply's per-key result as the
verification. See
``deploy/S3.md`` for the permissions this needs and the lifecycle backstop.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import itertools
import logging
import re
import secrets
import weakref
from collections.abc import AsyncGenerator, Generator, Sequence
from concurrent.futures import Future
from typing import Any, TypeVar

import boto3
from botocore.config import Config
from botocore.exceptions import BotoCoreError, ClientError

from filestore.config import Settings
from filestore.errors import ConfigError, NotFound, StorageUnavailable
from filestore.storage._jobs import after
from filestore.storage._s3_writer import (
    ClientUploads,
    Pool,
    S3Writer,
    close_opened,
    read_body,
    take,
    version_of,
)
from filestore.storage.base import BlobWriter, StoredBlob

T = TypeVar("T")
log = logging.getLogger(__name__)

#: HTTP connections kept per worker thread (see _connect).
POOL_PER_WORKER = 4
#: Default piece size of :meth:`S3BlobStore.read`.
PIECE_SIZE = 1 << 20
CONNECT_TIMEOUT = 5.0
#: Longest wait for the next byte of a response.
READ_TIMEOUT = 15.0
#: Attempts per call (botocore "standard" mode: at most ~3 s of backoff).
MAX_ATTEMPTS = 3
#: Keys per ``DeleteObjects`` request (S3's limit).
DELETE_BATCH = 1000
#: Entries :meth:`S3BlobStore.list_blobs` fetches per thread hop.
LIST_BATCH = 1000

_NAME = re.compile(r"[0-9a-f]{32}")
_SAFE_CODE = re.compile(r"[A-Za-z0-9.]{1,64}")
_MISSING = frozenset({"404", "NoSuchKey", "NotFound"})
_GONE = frozenset({"404", "NoSuchKey", "NoSuchUpload", "NoSuchVersion"})
#: Calls whose payload is a blob's bytes (see _connect).
_BODY_OPERATIONS = frozenset({"put_object", "upload_part"})


def _check_name(name: str) -> None:
    if _NAME.fullmatch(name) is None:
        raise ValueError("a blob name is 32 lowercase hex characters")


def _code(exc: BaseException) -> str:
    """A loggable reason: the S3 error code if it looks like one, else the
    exception class (never the SDK's message, which may echo the request)."""
    if isinstance(exc, ClientError):
        code = str(exc.response.get("Error", {}).get("Code", ""))
        if _SAFE_CODE.fullmatch(code):
            return code
    return type(exc).__name__


def _translate(what: str, exc: BaseException) -> StorageUnavailable | None:
    """StorageUnavailable for an SDK error (its code logged), else None."""
    if not isinstance(exc, BotoCoreError | ClientError):
        return None
    log.warning("S3 could not %s (%s)", what, _code(exc))
    return StorageUnavailable(f"S3 storage could not {what}")


def _by_key(item: dict[str, Any]) -> str:
    return str(item["Key"])


def _applies(rule: dict[str, Any], prefix: str) -> bool:
    """Whether an enabled lifecycle rule covers every key under ``prefix``."""
    if rule.get("Status") != "Enabled":
        return False
    scope = rule.get("Filter", {"Prefix": rule.get("Prefix", "")})
    scope = scope.get("And", scope)
    if any(k in scope for k in ("Tag", "Tags", "ObjectSizeGreaterThan", "ObjectSizeLessThan")):
        return False  # our objects carry no tags and come in every size
    return prefix.startswith(str(scope.get("Prefix", "")))


def lifecycle_findings(rules: list[dict[str, Any]], prefix: str, versioned: bool) -> list[str]:
    """What the bucket's lifecycle rules lack as a backstop for ``prefix``;
    empty when they do what ``deploy/s3-lifecycle.json`` does."""
    ours = [r for r in rules if _applies(r, prefix)]
    missing = []
    if not any("AbortIncompleteMultipartUpload" in r for r in ours):
        missing.append("no lifecycle rule aborts incomplete multipart uploads")
    if not any("Days" in r.get("Expiration", {}) for r in ours):
        missing.append("no lifecycle rule expires current objects")
    if versioned and not any("NoncurrentVersionExpiration" in r for r in ours):
        missing.append("versioning is on but no lifecycle rule expires noncurrent versions")
    return missing


class S3BlobStore:
    """:class:`~filestore.storage.base.BlobStore` and ``ListableBlobStore`` on
    an S3 bucket. Open with :meth:`open`; methods raise StorageUnavailable for
    any failure of S3, ValueError for a malformed name, RuntimeError once
    closed.

    Found by the start-up check, for ``/readyz`` and operators: ``versioned``
    (the bucket has or had versioning on, or its state cannot be read:
    deletions then remove every version), ``lifecycle_ok`` and
    ``lifecycle_warnings`` (the backstop rules it lacks).
    """

    name = "s3"

    def __init__(
        self, bucket: str, prefix: str, *, part_size: int = 8 << 20, max_workers: int = 16
    ) -> None:
        self.bucket = bucket
        self.prefix = prefix
        self.part_size = part_size
        self.versioned = False
        self.lifecycle_ok = False
        self.lifecycle_warnings: tuple[str, ...] = ()
        self._client: Any = None
        self._data_client: Any = None
        self._max_workers = max_workers
        self._pool = Pool(max_workers, _translate)
        self._writers: weakref.WeakSet[S3Writer] = weakref.WeakSet()
        self._uploads = ClientUploads(self._pool.run, self._call, self._abort_upload)

    @classmethod
    async def open(cls, settings: Settings) -> S3BlobStore:
        """Connect and check the bucket: reachable (HeadBucket), writable (a
        probe object), versioning state, lifecycle rules; a WARNING is logged
        for each backstop rule missing. Raises ConfigError for a bad endpoint
        or region or a missing bucket, StorageUnavailable if S3 cannot be
        reached or written."""
        store = cls(
            settings.s3_bucket,
            settings.s3_prefix,
            part_size=settings.s3_part_size,
            max_workers=settings.s3_max_workers,
        )
        try:
            await store._pool.run("create its client", functools.partial(store._connect, settings))
            await store._pool.run("check the bucket", store._inspect)
        except BaseException:
            await store.close()
            raise
        for warning in store.lifecycle_warnings:
            log.warning("S3 bucket %s: %s; see deploy/s3-lifecycle.json", store.bucket, warning)
        return store

    def _key(self, name: str) -> str:
        _check_name(name)
        return self.prefix + name

    # ------------------------------------------------- run in worker threads
    def _connect(self, settings: Settings) -> None:
        def config(**s3: Any) -> Config:
            return Config(
                connect_timeout=CONNECT_TIMEOUT,
                read_timeout=READ_TIMEOUT,
                retries={"max_attempts": MAX_ATTEMPTS, "mode": "standard"},
                s3={"addressing_style": settings.s3_addressing_style, **s3},
                # A download's open body holds its connection between reads,
                # outside the worker threads: size the pool for the streams in
                # flight, not the threads, or every stream past the threads'
                # number tears its connection down and the next opens a new one.
                max_pool_connections=POOL_PER_WORKER * self._max_workers,
            )

        session = boto3.session.Session()
        where = {
            "endpoint_url": settings.s3_endpoint_url or None,
            "region_name": settings.s3_region or None,
        }
        try:
            self._client = session.client("s3", config=config(), **where)
            # Blob bodies only (PutObject, UploadPart): over plain HTTP the
            # SDK would otherwise SHA-256 every byte into the signature (and
            # S3 would hash it again to check), the largest CPU cost of an
            # upload after the copy. The body keeps its CRC32 checksum
            # (a signed header), so S3 still refuses bytes damaged on the
            # way, and a tampered blob fails its AES-GCM tags on read. Over
            # HTTPS nothing changes: the SDK already sends bodies unsigned
            # with a CRC32 trailer. Control requests (deletions, completion)
            # keep signed payloads on the other client.
            self._data_client = session.client(
                "s3", config=config(payload_signing_enabled=False), **where
            )
        except ValueError as exc:
            raise ConfigError(
                "FILESTORE_S3_ENDPOINT_URL or FILESTORE_S3_REGION is unusable"
            ) from exc

    def _inspect(self) -> None:
        client = self._client
        try:
            client.head_bucket(Bucket=self.bucket)
        except ClientError as exc:
            if _code(exc) in ("404", "NoSuchBucket"):
                raise ConfigError(f"FILESTORE_S3_BUCKET: no bucket {self.bucket!r}") from exc
            raise
        self._probe()
        warnings = []
        try:
            status = client.get_bucket_versioning(Bucket=self.bucket).get("Status")
            self.versioned = status in ("Enabled", "Suspended")
        except ClientError as exc:
            # A service without versioning says so; otherwise (say, access
            # denied) the state is unknown: delete every version, to be safe.
            self.versioned = _code(exc) not in ("NotImplemented", "501")
            if self.versioned:
                warnings.append(f"cannot read the versioning state ({_code(exc)})")
        try:
            rules = client.get_bucket_lifecycle_configuration(Bucket=self.bucket)["Rules"]
        except ClientError as exc:
            if _code(exc) != "NoSuchLifecycleConfiguration":
                warnings.append(f"cannot read the lifecycle rules ({_code(exc)})")
            rules = []
        warnings += lifecycle_findings(rules, self.prefix, self.versioned)
        self.lifecycle_warnings = tuple(warnings)
        self.lifecycle_ok = not warnings

    def _probe(self) -> None:
        key = f"{self.prefix}.probe-{secrets.token_hex(8)}"
        reply = self._client.put_object(Bucket=self.bucket, Key=key, Body=b"filestore check\n")
        # Delete exactly the version written, so no delete marker is left.
        version = version_of(reply)
        self._call("delete_object", Key=key, **({"VersionId": version} if version else {}))

    def _call(self, operation: str, **params: Any) -> dict[str, Any]:
        """S3 ``operation`` on the bucket (for the writer's calls); a blob's
        bytes go through the client that leaves them out of the signature."""
        client = self._data_client if operation in _BODY_OPERATIONS else self._client
        reply: dict[str, Any] = getattr(client, operation)(Bucket=self.bucket, **params)
        return reply

    def _head(self, key: str) -> dict[str, Any] | None:
        try:
            head: dict[str, Any] = self._client.head_object(Bucket=self.bucket, Key=key)
        except ClientError as exc:
            if _code(exc) in _MISSING:
                return None
            raise
        return head

    def _open_body(self, key: str, span: str | None) -> Any:
        """The streaming body of a (ranged) GET; None for a range past the end."""
        extra = {"Range": span} if span else {}
        try:
            return self._client.get_object(Bucket=self.bucket, Key=key, **extra)["Body"]
        except ClientError as exc:
            if _code(exc) in _MISSING:
                raise NotFound("no such blob") from exc
            if _code(exc) == "InvalidRange":
                return None
            raise

    def _versions(self, key: str) -> list[dict[str, str]]:
        """Every version and delete marker of exactly ``key``."""
        pages = self._client.get_paginator("list_object_versions")
        return [
            {"Key": key, "VersionId": item["VersionId"]}
            for page in pages.paginate(Bucket=self.bucket, Prefix=key)
            for item in itertools.chain(page.get("Versions", ()), page.get("DeleteMarkers", ()))
            if item["Key"] == key
        ]

    def _delete_versions(self, items: list[dict[str, str]]) -> None:
        for start in range(0, len(items), DELETE_BATCH):
            reply = self._client.delete_objects(
                Bucket=self.bucket,
                Delete={"Objects": items[start : start + DELETE_BATCH], "Quiet": True},
            )
            # A 200 reply may still list keys S3 refused (litestream checks too).
            codes = {str(e.get("Code")) for e in reply.get("Errors", ())} - _GONE
            if codes:
                log.warning("S3 refused to delete versions (%s)", ", ".join(sorted(codes)))
                raise StorageUnavailable("S3 storage refused to delete some versions of a blob")

    def _abort_upload(self, key: str, upload_id: str) -> None:
        try:
            self._client.abort_multipart_upload(Bucket=self.bucket, Key=key, UploadId=upload_id)
        except ClientError as exc:
            if _code(exc) not in _GONE:
                raise

    def _remove(self, key: str) -> None:
        pages = self._client.get_paginator("list_multipart_uploads")
        uploads = [
            upload["UploadId"]
            for page in pages.paginate(Bucket=self.bucket, Prefix=key)
            for upload in page.get("Uploads", ())
            if upload["Key"] == key
        ]
        for upload_id in uploads:
            self._abort_upload(key, upload_id)
        if not self.versioned:
            reply = self._client.delete_object(Bucket=self.bucket, Key=key)
            if reply.get("DeleteMarker") or reply.get("VersionId"):
                log.warning("S3 bucket %s is versioned now; deleting every version", self.bucket)
                self.versioned = True
        for _ in range(3):  # a version written meanwhile is caught by the next round
            versions = self._versions(key) if self.versioned else []
            if not versions:
                break
            self._delete_versions(versions)
        if self._head(key) is not None or (self.versioned and self._versions(key)):
            raise StorageUnavailable("a blob is still present in S3 after deletion")

    def _abort_uploads_of(self, keys: set[str]) -> None:
        """Abort every incomplete multipart upload of ``keys``: one listing of
        the prefix's uploads (few: uploads in flight and those a crash left,
        which the lifecycle rule ages out) instead of one per key."""
        pages = self._client.get_paginator("list_multipart_uploads")
        for page in pages.paginate(Bucket=self.bucket, Prefix=self.prefix):
            for upload in page.get("Uploads", ()):
                if upload["Key"] in keys:
                    self._abort_upload(str(upload["Key"]), str(upload["UploadId"]))

    def _delete_batch(self, keys: list[str]) -> tuple[dict[str, str], list[str]]:
        """Abort the keys' uploads, then ``DeleteObjects`` at most
        :data:`DELETE_BATCH` keys a request, not quiet, its reply read key by
        key: a 200 may still refuse some, and only a key listed as deleted
        counts as deleted. Returns the keys not confirmed deleted, with S3's
        error code (``Unconfirmed`` if the reply left the key out), and the
        keys whose deletion left a delete marker (the bucket became
        versioned: they need every version removed)."""
        self._abort_uploads_of(set(keys))
        failed: dict[str, str] = {}
        marked: list[str] = []
        for start in range(0, len(keys), DELETE_BATCH):
            part = keys[start : start + DELETE_BATCH]
            reply = self._client.delete_objects(
                Bucket=self.bucket, Delete={"Objects": [{"Key": k} for k in part]}
            )
            confirmed = set()
            for deleted in reply.get("Deleted", ()):
                confirmed.add(str(deleted["Key"]))
                if deleted.get("DeleteMarker") or deleted.get("DeleteMarkerVersionId"):
                    marked.append(str(deleted["Key"]))
            for error in reply.get("Errors", ()):
                code = str(error.get("Code"))
                if code in _GONE:
                    confirmed.add(str(error.get("Key")))
                else:
                    confirmed.discard(str(error.get("Key")))
                    failed[str(error.get("Key"))] = code if _SAFE_CODE.fullmatch(code) else "?"
            failed.update(
                (k, "Unconfirmed") for k in part if k not in confirmed and k not in failed
            )
        if failed:
            codes = ", ".join(sorted(set(failed.values())))
            log.warning("S3 did not delete %d blobs (%s)", len(failed), codes)
        return failed, marked

    def _walk(self) -> Generator[StoredBlob, None, None]:
        """Objects (every key with a version left, where versioned) with the
        newest time per key, then incomplete multipart uploads."""
        kind, field = (
            ("list_object_versions", ("Versions", "DeleteMarkers"))
            if self.versioned
            else ("list_objects_v2", ("Contents",))
        )
        pages = self._client.get_paginator(kind).paginate(Bucket=self.bucket, Prefix=self.prefix)
        # A page covers a run of keys but lists versions and markers apart:
        # sorting each page by key makes the stream sorted, so groupby can
        # join a key's entries even across a page boundary.
        items = (
            item
            for page in pages
            for item in sorted(
                itertools.chain.from_iterable(page.get(f, ()) for f in field), key=_by_key
            )
        )
        for key, group in itertools.groupby(items, key=_by_key):
            newest = max(item["LastModified"].timestamp() for item in group)
            if _NAME.fullmatch(name := key[len(self.prefix) :]):
                yield StoredBlob(name, newest)
        pages = self._client.get_paginator("list_multipart_uploads")
        for page in pages.paginate(Bucket=self.bucket, Prefix=self.prefix):
            for upload in page.get("Uploads", ()):
                if _NAME.fullmatch(name := str(upload["Key"])[len(self.prefix) :]):
                    yield StoredBlob(name, upload["Initiated"].timestamp())

    # ------------------------------------------------------------------ public
    async def create(self, name: str) -> BlobWriter:
        """Start a blob; nothing is visible under ``name`` until commit. No
        request is made before the first part fills or the commit."""
        writer = S3Writer(self._uploads, self._key(name), self.part_size)
        if self._pool.closed:
            raise RuntimeError("the blob store is closed")
        self._writers.add(writer)
        return writer

    async def put(self, name: str, data: bytes | bytearray) -> None:
        """A blob smaller than a part is one ``PutObject`` at commit already:
        the writer's path is the one-trip path here."""
        writer = await self.create(name)
        try:
            await writer.write(data)
            await writer.commit()
        except BaseException:
            await asyncio.shield(writer.abort())
            raise

    async def read(
        self,
        name: str,
        offset: int = 0,
        length: int | None = None,
        *,
        piece_size: int = PIECE_SIZE,
    ) -> AsyncGenerator[bytes, None]:
        """One (ranged) ``GetObject`` for the span, streamed in pieces of
        exactly ``piece_size`` bytes but the last; stops early at the end of
        the blob. NotFound if there is no such object. The next piece is read
        while the caller handles this one; the connection is released when
        the generator finishes or is closed."""
        key = self._key(name)
        if offset < 0 or (length is not None and length < 0) or piece_size < 1:
            raise ValueError("offset and length must not be negative, piece_size positive")
        if length == 0:  # no Range can ask for nothing, but a missing blob is still NotFound
            if await self._pool.run("stat a blob", functools.partial(self._head, key)) is None:
                raise NotFound("no such blob")
            return
        span = None
        if offset or length is not None:
            span = f"bytes={offset}-{'' if length is None else offset + length - 1}"
        opening = self._pool.submit(functools.partial(self._open_body, key, span))
        try:
            body = await self._pool.settle("read a blob", opening)
        except asyncio.CancelledError:
            self._pool.submit(functools.partial(close_opened, opening))
            raise
        if body is not None:
            pieces = read_body(self._pool, body, piece_size)
            try:
                async for piece in pieces:
                    yield piece
            finally:
                await pieces.aclose()

    async def get(self, name: str, size: int) -> bytes:
        """One ranged ``GetObject`` of the first ``size + 1`` bytes, read and
        closed in the same worker job."""
        key = self._key(name)
        if size < 0:
            raise ValueError("size must not be negative")

        def fetch() -> bytes:
            body = self._open_body(key, f"bytes=0-{size}")
            if body is None:  # an empty object: no range fits it
                return b""
            with contextlib.closing(body):
                return bytes(body.read())

        return await self._pool.run("read a blob", fetch)

    async def size(self, name: str) -> int | None:
        """Size of the current object (HEAD), or None; uploads do not count."""
        head = await self._pool.run("stat a blob", functools.partial(self._head, self._key(name)))
        return None if head is None else int(head["ContentLength"])

    async def exists(self, name: str) -> bool:
        """Whether the object exists or, where the bucket is versioned, any
        version or delete marker of it is left (an error is not "no")."""
        key = self._key(name)

        def look() -> bool:
            return self._head(key) is not None or bool(self.versioned and self._versions(key))

        return await self._pool.run("look for a blob", look)

    async def delete(self, name: str) -> None:
        """Abort every incomplete multipart upload of the key, delete every
        version and delete marker (batch replies checked key by key) or, where
        unversioned, the object; then verify: HEAD 404 and no versions left,
        else StorageUnavailable. A missing blob is not an error."""
        await self._pool.run("delete a blob", functools.partial(self._remove, self._key(name)))

    async def delete_many(self, names: Sequence[str]) -> dict[str, StorageUnavailable | None]:
        """The purge's batch deletion. Unversioned: abort the keys' incomplete
        uploads (one listing for the batch), then ``DeleteObjects`` 1,000 keys
        a request. A key counts as gone when the reply lists it as deleted
        (S3 is strongly consistent: no read after that reply sees it); a key
        refused (``Errors``) or left out of the reply gets an error and stays
        pending. No HEAD or listing per batch follows: on the servers
        measured, reading back costs more than the deletion itself. A
        versioned bucket, and keys whose deletion left a delete marker, go
        through :meth:`delete` key by key (every version and marker removed,
        then a HEAD and a version listing)."""
        by_key = {self._key(name): name for name in names}
        outcome: dict[str, StorageUnavailable | None] = {}
        batch = [] if self.versioned else list(by_key)
        one_by_one = list(by_key) if self.versioned else []
        if batch:
            try:
                failed, marked = await self._pool.run(
                    "delete blobs", functools.partial(self._delete_batch, batch)
                )
            except StorageUnavailable as exc:
                outcome.update((by_key[k], exc) for k in batch)
            else:
                if marked:
                    log.warning("S3 bucket %s is versioned now; deleting versions", self.bucket)
                    self.versioned = True
                    one_by_one += marked
                refusal = StorageUnavailable("S3 storage did not delete a blob")
                for key in batch:
                    if key not in marked:
                        outcome[by_key[key]] = refusal if key in failed else None
        results = await asyncio.gather(
            *(self.delete(by_key[k]) for k in one_by_one), return_exceptions=True
        )
        for key, result in zip(one_by_one, results, strict=True):
            if isinstance(result, BaseException) and not isinstance(result, StorageUnavailable):
                raise result
            outcome[by_key[key]] = result
        return outcome

    async def check(self) -> None:
        """Put a small probe object under the prefix and delete that very
        version; StorageUnavailable if either fails."""
        await self._pool.run("write its health probe", self._probe)

    async def list_blobs(self) -> AsyncGenerator[StoredBlob, None]:
        """Yield committed blobs (once per name, with its newest version's
        time) and incomplete multipart uploads (``Initiated``; so a name may
        appear twice), :data:`LIST_BATCH` per thread hop. Keys under the
        prefix that are not blob names are skipped."""
        walk = self._walk()
        job: Future[list[StoredBlob]] | None = None
        try:
            while True:
                job = self._pool.submit(functools.partial(take, walk, LIST_BATCH))
                batch = await self._pool.settle("list blobs", job)
                if not batch:
                    return
                for blob in batch:
                    yield blob
        finally:
            if not self._pool.closed:
                await self._pool.settle("list blobs", self._pool.submit(after(job, walk.close)))

    async def close(self) -> None:
        """Wait for parts in flight, drain the pool, close the client.
        Uploads never committed or aborted stay incomplete in S3 for the
        orphan sweep, as after a crash. Idempotent."""
        if self._pool.closed:
            return
        for task in [task for writer in list(self._writers) for task in writer._pending()]:
            with contextlib.suppress(BaseException):
                await asyncio.shield(task)
        await self._pool.close(self._client, self._data_client)
