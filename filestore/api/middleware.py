"""Cross-cutting HTTP behaviour: request ids, error answers, safe headers.

The request id is the caller's ``X-Request-Id`` when it is sane, else a new
one (``filestore.api.request_info``); every answer carries it.

Every error leaves as problem+json. Domain errors map through
``problems.TABLE``; aiohttp's own HTTP errors keep their status; anything else
is a 500 that names only the request id, with the traceback in the log.
"""

from __future__ import annotations

import logging

from aiohttp import web
from aiohttp.typedefs import Handler

from filestore.api.problems import HTTP_SLUGS, error_response, problem_response
from filestore.api.request_info import assign_request_id, route_template
from filestore.errors import FilestoreError

log = logging.getLogger("filestore.api")


@web.middleware
async def errors_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    request_id = assign_request_id(request)
    try:
        response = await handler(request)
    except FilestoreError as exc:
        if isinstance(exc, web.HTTPException):  # pragma: no cover - never both
            raise
        response = error_response(exc, request_id)
        if response.status >= 500:
            log.error(
                "request %s %s %s failed: %s",
                request_id,
                request.method,
                route_template(request) or "-",
                type(exc).__name__,
                exc_info=exc.__cause__ is not None and response.status not in (503, 507),
                extra={"request_id": request_id},
            )
    except web.HTTPException as exc:
        if exc.status < 400:
            raise
        slug = HTTP_SLUGS.get(exc.status, "http-error")
        headers = {k: v for k, v in exc.headers.items() if k.lower() == "allow"}
        response = problem_response(
            exc.status,
            slug,
            exc.reason,
            exc.text if exc.text != f"{exc.status}: {exc.reason}" else None,
            request_id=request_id,
            headers=headers,
        )
    except Exception:
        log.exception(
            "request %s %s %s failed",
            request_id,
            request.method,
            route_template(request) or "-",
            extra={"request_id": request_id},
        )
        response = problem_response(
            500,
            "internal",
            "Internal server error",
            "see the server log for request " + request_id,
            request_id=request_id,
        )
    if not response.prepared:
        response.headers.setdefault("X-Request-Id", request_id)
        response.headers.setdefault("X-Content-Type-Options", "nosniff")
    return response
