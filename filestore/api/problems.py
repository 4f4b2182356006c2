"""The one table from domain errors to RFC 9457 problem+json answers.

Clients and scripts match on ``type``, which never changes once published;
``title`` is the human summary for the type and ``detail`` the message of the
error, which by construction holds no secrets or internals.
"""

from __future__ import annotations

import json
from dataclasses import dataclass

from aiohttp import web

from filestore import errors

PROBLEM_BASE = "urn:filestore:problem:"
CONTENT_TYPE = "application/problem+json"


@dataclass(frozen=True)
class Problem:
    status: int
    slug: str
    title: str


#: Most specific class first; the first isinstance match wins.
TABLE: tuple[tuple[type[Exception], Problem], ...] = (
    (errors.ChecksumMismatch, Problem(422, "checksum-mismatch", "Checksum mismatch")),
    (errors.RangeNotSatisfiable, Problem(416, "range-not-satisfiable", "Range not satisfiable")),
    (errors.Conflict, Problem(409, "conflict", "Conflict")),
    (errors.BadRequest, Problem(400, "bad-request", "Bad request")),
    (errors.TooLarge, Problem(413, "too-large", "File too large")),
    (errors.ClientGone, Problem(408, "request-timeout", "Request body incomplete")),
    (errors.AuthError, Problem(401, "unauthorized", "Unauthorized")),
    (errors.Forbidden, Problem(403, "forbidden", "Forbidden")),
    (errors.NotFound, Problem(404, "not-found", "Not found")),
    (errors.Gone, Problem(410, "gone", "Gone")),
    (errors.IntegrityError, Problem(500, "integrity", "Stored data failed its integrity check")),
    (errors.KeyDestroyed, Problem(410, "gone", "Gone")),
    (errors.KeyNotFound, Problem(500, "key-unavailable", "The file's key is unavailable")),
    (errors.InsufficientStorage, Problem(507, "insufficient-storage", "Insufficient Storage")),
    (errors.Unavailable, Problem(503, "unavailable", "Service unavailable")),
)

#: aiohttp's own HTTP errors (unknown route, wrong method, bad headers).
HTTP_SLUGS = {
    400: "bad-request",
    404: "not-found",
    405: "method-not-allowed",
    408: "request-timeout",
    413: "too-large",
    415: "unsupported-media-type",
}

INTERNAL = Problem(500, "internal", "Internal server error")


def problem_for(exc: BaseException) -> Problem:
    """The problem a domain error maps to (500 ``internal`` if none)."""
    for cls, problem in TABLE:
        if isinstance(exc, cls):
            return problem
    return INTERNAL


def problem_response(
    status: int,
    slug: str,
    title: str,
    detail: str | None = None,
    *,
    request_id: str | None = None,
    headers: dict[str, str] | None = None,
) -> web.Response:
    body: dict[str, object] = {"type": PROBLEM_BASE + slug, "title": title, "status": status}
    if detail:
        body["detail"] = detail
    if request_id:
        body["request_id"] = request_id
    return web.Response(
        status=status,
        body=json.dumps(body).encode(),
        content_type=CONTENT_TYPE,
        headers=headers,
    )


def error_response(exc: BaseException, request_id: str) -> web.Response:
    """Answer for a domain error, with the headers its status calls for."""
    problem = problem_for(exc)
    headers: dict[str, str] = {}
    if isinstance(exc, errors.Unavailable):
        headers["Retry-After"] = str(exc.retry_after)
    if isinstance(exc, errors.AuthError):
        headers["WWW-Authenticate"] = 'Bearer realm="filestore"'
    if isinstance(exc, errors.RangeNotSatisfiable):
        headers["Content-Range"] = f"bytes */{exc.size}"
    if problem.status >= 500 and not isinstance(exc, errors.Unavailable):
        detail = "see the server log for request " + request_id
    else:
        detail = str(exc)
    return problem_response(
        problem.status,
        problem.slug,
        problem.title,
        detail,
        request_id=request_id,
        headers=headers,
    )
