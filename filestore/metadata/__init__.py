"""The metadata seam: small Protocols by concern (:mod:`.base`), the
lifecycle's rules (:mod:`.rules`), and one SQLAlchemy Core implementation for
SQLite and PostgreSQL (:mod:`.sql`, :mod:`.database`, :mod:`.migrate`)."""

from filestore.metadata.base import (
    ApiKeyRecord,
    ApiKeyStore,
    AuditStore,
    DeleteReason,
    FileKey,
    FileRecord,
    FileState,
    FileStore,
    MetadataStore,
    Role,
)

__all__ = [
    "ApiKeyRecord",
    "ApiKeyStore",
    "AuditStore",
    "DeleteReason",
    "FileKey",
    "FileRecord",
    "FileState",
    "FileStore",
    "MetadataStore",
    "Role",
]
