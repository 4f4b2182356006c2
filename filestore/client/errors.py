"""What the client raises: one tree, one class per kind of failure.

    ClientError                    base; carries the problem+json fields
    ├── AuthError                  401: no key, a malformed, unknown or revoked key
    │   └── ForbiddenError         403: the key's role may not do this
    ├── NotFoundError              404: no such file (or another tenant's), or a
    │   │                          signed link that no longer verifies
    │   └── GoneError              410: expired, deleted or used up
    ├── BadRequestError            400 and other 4xx: the request's shape is refused
    │   └── RangeNotSatisfiableError  416: the range lies outside the file
    ├── ConflictError              409: not in the state that allows it (a receipt
    │                              before the deletion is under a checkpoint)
    ├── TooLargeError              413: over the server's size limit
    ├── IntegrityError             bytes or proofs that do not check out
    │   ├── ChecksumMismatchError  422, or a SHA-256 the client computed that
    │   │                          differs from the server's
    │   └── ReceiptVerificationError  a receipt that fails verification
    ├── UnavailableError           503 (after the retries), 408
    │   └── ConnectionFailedError  no connection, or a connection lost mid-call
    └── ServerError                500 and other answers the client cannot use

Every field comes from the server's problem document (``type``, ``title``,
``status``, ``detail``, ``request_id``) when there is one; errors found on
this side have ``status`` None. ``str(err)`` never holds the API key or a
signed link's signature.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

__all__ = [
    "PROBLEM_BASE",
    "AuthError",
    "BadRequestError",
    "ChecksumMismatchError",
    "ClientError",
    "ConflictError",
    "ConnectionFailedError",
    "ForbiddenError",
    "GoneError",
    "IntegrityError",
    "NotFoundError",
    "RangeNotSatisfiableError",
    "ReceiptVerificationError",
    "ServerError",
    "TooLargeError",
    "UnavailableError",
    "error_for",
]

PROBLEM_BASE = "urn:filestore:problem:"


class ClientError(Exception):
    """Base of every error the filestore client raises on purpose."""

    def __init__(
        self,
        message: str,
        *,
        status: int | None = None,
        type: str | None = None,
        title: str | None = None,
        detail: str | None = None,
        request_id: str | None = None,
    ) -> None:
        super().__init__(message)
        self.message = message
        self.status = status
        self.type = type
        self.title = title
        self.detail = detail
        self.request_id = request_id

    def __str__(self) -> str:
        text = self.message
        if self.request_id and self.request_id not in text:
            text += f" (request {self.request_id})"
        return text

    def problem(self) -> dict[str, Any]:
        """The problem+json fields, for a script (``--json``)."""
        return {
            "type": self.type,
            "title": self.title,
            "status": self.status,
            "detail": self.detail,
            "request_id": self.request_id,
        }


class AuthError(ClientError):
    """401: the API key is missing, malformed, unknown or revoked."""


class ForbiddenError(AuthError):
    """403: the key is valid but its role may not do this."""


class NotFoundError(ClientError):
    """404: no such file, or it is another tenant's; or a signed link that
    has expired or does not verify."""


class GoneError(NotFoundError):
    """410: the file expired, was deleted, or used up its downloads."""


class BadRequestError(ClientError):
    """The server refused the request's shape (a bad ttl, a bad name …)."""


class RangeNotSatisfiableError(BadRequestError):
    """416: the range starts past the end of the file."""

    def __init__(self, message: str, *, size: int | None = None, **fields: Any) -> None:
        super().__init__(message, **fields)
        self.size = size


class ConflictError(ClientError):
    """409: the file is not in the state the call needs; for a receipt, the
    file is not deleted yet or its deletion is not yet under a signed
    checkpoint (retry after the next purge pass)."""


class TooLargeError(ClientError):
    """413: the file is over the server's size limit."""


class IntegrityError(ClientError):
    """Bytes or proofs that do not check out."""


class ChecksumMismatchError(IntegrityError):
    """The SHA-256 of the bytes is not the one expected: the server refused
    an upload whose body differs from the checksum sent (422), or the
    client's own digest of an upload or download differs from the server's."""


class ReceiptVerificationError(IntegrityError):
    """A deletion receipt failed verification against the pinned key, or is
    a receipt for another file."""


class UnavailableError(ClientError):
    """The server is unavailable (503, still after the retries) or cut the
    request off (408). ``retry_after`` is the server's hint, in seconds."""

    def __init__(self, message: str, *, retry_after: float | None = None, **fields: Any) -> None:
        super().__init__(message, **fields)
        self.retry_after = retry_after


class ConnectionFailedError(UnavailableError):
    """No connection could be made, or it was lost during the call."""


class ServerError(ClientError):
    """A server fault (500) or an answer the client cannot make sense of."""


_BY_SLUG: Mapping[str, type[ClientError]] = {
    "unauthorized": AuthError,
    "forbidden": ForbiddenError,
    "not-found": NotFoundError,
    "gone": GoneError,
    "bad-request": BadRequestError,
    "method-not-allowed": BadRequestError,
    "unsupported-media-type": BadRequestError,
    "expectation-failed": BadRequestError,
    "range-not-satisfiable": RangeNotSatisfiableError,
    "conflict": ConflictError,
    "too-large": TooLargeError,
    "checksum-mismatch": ChecksumMismatchError,
    "request-timeout": UnavailableError,
    "unavailable": UnavailableError,
}

_BY_STATUS: Mapping[int, type[ClientError]] = {
    401: AuthError,
    403: ForbiddenError,
    404: NotFoundError,
    408: UnavailableError,
    409: ConflictError,
    410: GoneError,
    413: TooLargeError,
    416: RangeNotSatisfiableError,
    422: ChecksumMismatchError,
    503: UnavailableError,
}


def _text(value: object) -> str | None:
    return value if isinstance(value, str) and value else None


def error_for(
    status: int,
    problem: Mapping[str, Any] | None,
    *,
    request_id: str | None = None,
    retry_after: float | None = None,
    range_size: int | None = None,
    what: str = "the request",
) -> ClientError:
    """The error for an answer of ``status`` with its problem document (None
    when the answer had none, as for HEAD). The problem's ``type`` decides
    the class when it is one the client knows, else the status does."""
    problem = problem or {}
    ptype = _text(problem.get("type"))
    cls: type[ClientError] | None = None
    if ptype and ptype.startswith(PROBLEM_BASE):
        cls = _BY_SLUG.get(ptype[len(PROBLEM_BASE) :])
    if cls is None:
        cls = _BY_STATUS.get(status)
    if cls is None:
        cls = BadRequestError if 400 <= status < 500 else ServerError
    title = _text(problem.get("title"))
    detail = _text(problem.get("detail"))
    rid = _text(problem.get("request_id")) or request_id
    message = f"{what} failed: {status} {title or _REASONS.get(status, 'error')}"
    if detail:
        message += f": {detail}"
    fields: dict[str, Any] = {
        "status": status,
        "type": ptype,
        "title": title,
        "detail": detail,
        "request_id": rid,
    }
    if issubclass(cls, UnavailableError):
        return cls(message, retry_after=retry_after, **fields)
    if issubclass(cls, RangeNotSatisfiableError):
        return cls(message, size=range_size, **fields)
    return cls(message, **fields)


_REASONS = {
    400: "Bad request",
    401: "Unauthorized",
    403: "Forbidden",
    404: "Not found",
    405: "Method not allowed",
    408: "Request timeout",
    409: "Conflict",
    410: "Gone",
    413: "File too large",
    415: "Unsupported media type",
    416: "Range not satisfiable",
    422: "Checksum mismatch",
    500: "Internal server error",
    502: "Bad gateway",
    503: "Service unavailable",
    504: "Gateway timeout",
}
