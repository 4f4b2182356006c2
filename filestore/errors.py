"""The one tree of filestore's domain errors.

Nothing here knows HTTP. Backends translate their own exceptions into these at
the boundary (``raise StorageUnavailable(...) from exc``); the API maps them to
problem+json in one table (``filestore.api.problems``) and the CLI to exit codes.

    FilestoreError
    ├── ConfigError              a setting is missing or wrong (message names it)
    │   └── SplitBrain           this instance's KEKs are not the cluster's
    ├── IntegrityError           stored ciphertext or key failed authentication;
    │                            one opaque error for every cause
    ├── KeyNotFound              a KEK id is not in the keyring (foreign)
    │   └── KeyDestroyed         the KEK was destroyed: its files are crypto-erased
    ├── NotFound                 no such file, or not visible to this tenant
    ├── Gone                     the file expired or was deleted
    ├── BadRequest               the request is malformed (bad option, bad name …)
    │   ├── ChecksumMismatch     the body does not match the expected SHA-256
    │   ├── RangeNotSatisfiable  the Range header cannot be served
    │   └── Conflict             the resource is not in a state that allows it
    ├── TooLarge                 the body exceeds the size limit
    ├── ClientGone               the client disconnected or stalled mid-body
    ├── AuthError                missing or unknown credentials
    ├── Forbidden                authenticated, but the role may not do this
    └── Unavailable              a dependency is down; retry later
        ├── StorageUnavailable
        │   └── StorageFull      the blob store is out of space or quota
        ├── MetadataUnavailable
        │   └── MetadataFull     the database is out of space
        └── InsufficientStorage  what both *Full are (507, not 503)
"""

from __future__ import annotations

import errno


class FilestoreError(Exception):
    """Base of every error filestore raises on purpose.

    ``str(err)`` is safe to show to a client or write to a log: it never holds
    key material, file names or raw backend error text.
    """


class ConfigError(FilestoreError):
    """A setting is missing or has a value filestore cannot use."""


class SplitBrain(ConfigError):
    """This instance holds other KEKs than the instances it shares a database
    with: keys it wrapped would be unreadable to them. It must stop wrapping."""


class IntegrityError(FilestoreError):
    """Ciphertext, header or wrapped key failed authentication.

    Deliberately carries no detail: which check failed is not told to callers,
    so the error cannot serve as an oracle.
    """

    def __init__(self, message: str = "stored data failed its integrity check") -> None:
        super().__init__(message)


class KeyNotFound(FilestoreError):
    """The key-encryption key a file was wrapped under is not in the keyring."""


class KeyDestroyed(KeyNotFound):
    """The KEK was destroyed on schedule: every file it wrapped is
    crypto-erased, which a reader sees as gone, not as a server fault."""


class NotFound(FilestoreError):
    """No such file, or the file belongs to another tenant (never told apart)."""


class Gone(FilestoreError):
    """The file existed but expired or was deleted; its bytes are unreadable."""


class BadRequest(FilestoreError):
    """The request is malformed; the message says what to change."""


class ChecksumMismatch(BadRequest):
    """The uploaded body does not match the checksum the client sent."""


class Conflict(BadRequest):
    """The request is fine but the resource is not in the state it needs
    (e.g. a receipt for a file not yet deleted)."""


class RangeNotSatisfiable(BadRequest):
    """The requested byte range lies outside the file."""

    def __init__(self, message: str, size: int) -> None:
        super().__init__(message)
        self.size = size


class TooLarge(FilestoreError):
    """The body is larger than the configured limit."""

    def __init__(self, limit: int) -> None:
        super().__init__(f"the file exceeds the size limit of {limit} bytes")
        self.limit = limit


class ClientGone(FilestoreError):
    """The client went away or stalled before the body was complete."""


class AuthError(FilestoreError):
    """Credentials are missing, malformed, unknown or revoked."""


class Forbidden(FilestoreError):
    """The caller is known but its role may not perform this action."""


class Unavailable(FilestoreError):
    """A dependency is unreachable; the operation may succeed if retried."""

    retry_after: int = 5


class StorageUnavailable(Unavailable):
    """The blob store could not be reached or refused the operation."""


class MetadataUnavailable(Unavailable):
    """The metadata database could not be reached or is locked."""


class InsufficientStorage(Unavailable):
    """A dependency is out of space (ENOSPC, EDQUOT, SQLite's SQLITE_FULL).
    Answered 507, not 503: retrying helps only once space is freed. Nothing
    of the failed request is kept."""


class StorageFull(StorageUnavailable, InsufficientStorage):
    """The blob store's medium is full or over quota."""


class MetadataFull(MetadataUnavailable, InsufficientStorage):
    """The metadata database could not grow: its disk is full."""


#: ``errno`` values that mean the medium is full (ENOSPC) or over quota (EDQUOT).
NO_SPACE = frozenset({errno.ENOSPC, errno.EDQUOT})


def out_of_space(exc: BaseException) -> bool:
    """Whether ``exc`` is an OSError saying the medium is full or over quota."""
    return isinstance(exc, OSError) and exc.errno in NO_SPACE
