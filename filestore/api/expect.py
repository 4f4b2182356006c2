"""``Expect: 100-continue``, answered before the client sends its body.

aiohttp runs the expect handler before any middleware, so this is where an
upload that cannot succeed is refused without its body crossing the network:
a missing or wrong key (401) or a declared size over the limit (413). Any
other expectation gets 417. All answers are problem+json like the rest.
"""

from __future__ import annotations

from aiohttp import HttpVersion11, web

from filestore.api.context import services
from filestore.api.problems import error_response, problem_response
from filestore.auth import authenticate
from filestore.errors import FilestoreError, TooLarge


async def expect_handler(request: web.Request) -> web.StreamResponse | None:
    expect = request.headers.get("Expect", "")
    if expect.lower() != "100-continue":
        return problem_response(
            417,
            "expectation-failed",
            "Expectation failed",
            "only 'Expect: 100-continue' is supported",
        )
    if request.method == "POST" and request.path == "/v1/files":
        svc = services(request)
        try:
            await authenticate(svc.metadata, request.headers.get("Authorization"), svc.key_cache)
            length = request.content_length
            if length is not None and length > svc.settings.max_file_size:
                raise TooLarge(svc.settings.max_file_size)
        except FilestoreError as exc:
            return error_response(exc, "expect")
    if request.version == HttpVersion11:
        await request.writer.write(b"HTTP/1.1 100 Continue\r\n\r\n")
        request.writer.output_size = 0
    return None
