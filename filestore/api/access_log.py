"""The access log, without query strings.

aiohttp's default line includes the full request line, and a signed link's
``signature`` lives in the query: whoever reads such a log could download the
file. This logger writes the path only, never the query or any header.
"""

from __future__ import annotations

from aiohttp import web
from aiohttp.abc import AbstractAccessLogger


class AccessLogger(AbstractAccessLogger):
    def log(self, request: web.BaseRequest, response: web.StreamResponse, time: float) -> None:
        self.logger.info(
            "%s %s %s %d %d %.3fs",
            request.remote,
            request.method,
            request.path,
            response.status,
            response.body_length,
            time,
        )
