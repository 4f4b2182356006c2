"""The access log: one line per request, naming the route, never the path.

aiohttp's default line includes the full request line, and a signed link's
``signature`` lives in the query: whoever reads such a log could download the
file. This logger writes the route template (``/v1/files/{id}``: no file id,
and nothing of a junk path), never the query or any header, and never a
token or a file name. Each record also carries its figures as structured
fields (``request_id``, ``route``, ``method``, ``status``, ``bytes``,
``duration_seconds``, ``tenant``, ``remote``), which the JSON log format
(``FILESTORE_LOG_FORMAT=json``, ``filestore.logs``) writes as keys.
"""

from __future__ import annotations

from aiohttp import web
from aiohttp.abc import AbstractAccessLogger

from filestore.api.request_info import request_id_of, route_template, tenant_of


class AccessLogger(AbstractAccessLogger):
    def log(self, request: web.BaseRequest, response: web.StreamResponse, time: float) -> None:
        route = route_template(request)
        request_id = request_id_of(request) or response.headers.get("X-Request-Id")
        tenant = tenant_of(request)
        fields = {
            "request_id": request_id,
            "route": route,
            "method": request.method,
            "status": response.status,
            "bytes": response.body_length,
            "duration_seconds": round(time, 6),
            "tenant": tenant,
            "remote": request.remote,
        }
        self.logger.info(
            "%s %s %s %d %d %.3fs id=%s tenant=%s",
            request.remote,
            request.method,
            route or "-",
            response.status,
            response.body_length,
            time,
            request_id or "-",
            tenant or "-",
            extra=fields,
        )
