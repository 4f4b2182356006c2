"""What a client is told about its file.

An upload builds this from what the client just sent. A read builds it from
the row and its sealed fields. The API turns it into JSON and headers. It gets
a module of its own so that uploads and reads do not import each other, and
so the API can use the type without depending on either of them.
"""

from __future__ import annotations

from dataclasses import dataclass

from filestore import ids


@dataclass(frozen=True)
class FileInfo:
    """What a client may learn of its file."""

    id: bytes
    size: int
    sha256: str
    created_at: float
    expires_at: float
    filename: str | None
    content_type: str | None
    max_downloads: int | None
    downloads: int

    @property
    def id_text(self) -> str:
        return ids.to_text(self.id)
