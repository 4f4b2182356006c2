"""Metadata backends behind the :class:`MetadataStore` Protocol."""

from filestore.metadata.base import (
    ApiKeyRecord,
    DeleteReason,
    FileKey,
    FileRecord,
    FileState,
    MetadataStore,
    Role,
)

__all__ = [
    "ApiKeyRecord",
    "DeleteReason",
    "FileKey",
    "FileRecord",
    "FileState",
    "MetadataStore",
    "Role",
]
