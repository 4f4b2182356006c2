"""What the client returns: frozen dataclasses, times as aware UTC datetimes."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

from filestore.audit import AuditRecord

__all__ = [
    "Deletion",
    "Download",
    "FileInfo",
    "PurgeStatus",
    "Receipt",
    "SignedLink",
]


def _iso(value: datetime | None) -> str | None:
    if value is None:
        return None
    return value.isoformat(timespec="milliseconds").replace("+00:00", "Z")


@dataclass(frozen=True)
class FileInfo:
    """A stored file. From an upload every field is known; from ``info``
    (the file's headers) ``max_downloads`` and ``url`` are None and
    ``created_at`` has whole seconds."""

    id: str
    size: int
    sha256: str
    created_at: datetime
    expires_at: datetime
    filename: str | None = None
    content_type: str | None = None
    max_downloads: int | None = None
    url: str | None = None

    def to_json(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "size": self.size,
            "sha256": self.sha256,
            "created_at": _iso(self.created_at),
            "expires_at": _iso(self.expires_at),
            "filename": self.filename,
            "content_type": self.content_type,
            "max_downloads": self.max_downloads,
            "url": self.url,
        }


@dataclass(frozen=True)
class Download:
    """A download written to ``path``: bytes ``offset`` to ``offset +
    length - 1`` of the file. ``verified`` is True when the whole file was
    read and its SHA-256 matched the server's."""

    file: FileInfo
    path: Path
    offset: int
    length: int
    verified: bool

    def to_json(self) -> dict[str, Any]:
        return {
            "file": self.file.to_json(),
            "path": str(self.path),
            "offset": self.offset,
            "length": self.length,
            "verified": self.verified,
        }


@dataclass(frozen=True)
class SignedLink:
    """A download URL that needs no API key, valid until ``expires_at``
    (never past the file's own expiry). Whoever holds it can read the file."""

    url: str
    expires_at: datetime

    def to_json(self) -> dict[str, Any]:
        return {"url": self.url, "expires_at": _iso(self.expires_at)}


@dataclass(frozen=True)
class Deletion:
    """``completed`` is False when another worker already holds the
    deletion (202); it finishes it. ``already_gone``: the file was deleted
    before (or expired), so there was nothing left to do."""

    id: str
    completed: bool
    already_gone: bool = False

    def to_json(self) -> dict[str, Any]:
        return {"id": self.id, "completed": self.completed, "already_gone": self.already_gone}


@dataclass(frozen=True)
class Receipt:
    """A deletion receipt. ``text`` is the receipt as served, a C2SP
    tlog-proof (keep it: ``filestore audit verify-receipt`` checks it
    offline); ``record`` is its audit record, its hash checked. ``verified``
    is True only when the signature and the inclusion proof were checked
    against a pinned public key and the record is this file's."""

    file_id: str
    record: AuditRecord
    tree_size: int
    text: str = field(repr=False)
    verified: bool

    def to_json(self) -> dict[str, Any]:
        return {
            "file_id": self.file_id,
            "verified": self.verified,
            "tree_size": self.tree_size,
            "record": self.record.to_json(),
            "receipt": self.text,
        }


@dataclass(frozen=True)
class PurgeStatus:
    """The operator's view of the purge (``GET /v1/purge/status``): the
    figures people look at first, and ``raw``, the whole document."""

    now: datetime | None
    health: Mapping[str, str]
    scheduler_running: bool
    interval_seconds: float | None
    next_pass_at: datetime | None
    last_pass_finished_at: datetime | None
    last_pass_purged: int | None
    last_pass_failed: int | None
    backlog: int | None
    most_overdue_seconds: float
    failing_files: int | None
    live_files: int | None
    purged_total: int
    raw: Mapping[str, Any] = field(repr=False)

    @property
    def healthy(self) -> bool:
        return bool(self.health) and all(v == "ok" for v in self.health.values())

    def to_json(self) -> dict[str, Any]:
        return dict(self.raw)
