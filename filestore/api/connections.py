"""A deadline aiohttp does not set: the request head.

aiohttp closes an idle keep-alive connection (``keepalive_timeout``, from
KEEPALIVE_TIMEOUT) and filestore cuts a stalled body itself (READ_TIMEOUT,
:mod:`filestore.api.uploads`). Nothing bounds the time a client takes over
its request line and headers: aiohttp's only timer on a connection that has
not finished a head is the keep-alive one, so a client that trickles a head
a byte at a time (slowloris), or connects and sends nothing, holds the
connection for the whole keep-alive timeout.

:class:`GuardedSite` listens like ``web.TCPSite`` but wraps the protocol of
every connection it accepts (:class:`_Guarded`), and the server's request
handler (:func:`_tracking`), so that:

* a request head must be complete within HEADER_TIMEOUT of the connection
  opening, or of the first byte that arrives after the previous request's
  handler returned; bytes trickling in never move the deadline;
* at the deadline, a connection that has not carried a request yet gets a
  408 problem+json and is closed; one that already answered a request is
  closed without a word (bytes after an answer may be the rest of a body the
  handler did not read, and a 408 there could pass for a second answer);
* an idle kept-alive connection (no byte since the last answer) is left to
  aiohttp's keep-alive timer.

A head is complete at its blank line (``\\r\\n\\r\\n``) or when its request
reaches the application, whichever is seen first. One case stays with the
keep-alive timer: part of a pipelined head that arrived while the previous
request was still being handled, with nothing after it.
"""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import Awaitable, Callable
from typing import Any, cast

from aiohttp import web

from filestore.api.problems import CONTENT_TYPE, PROBLEM_BASE

log = logging.getLogger("filestore.api")

_HEAD_END = b"\r\n\r\n"
#: How long a cut connection may take to flush its 408 before it is aborted.
_CLOSE_GRACE = 5.0

_BODY_408 = json.dumps(
    {
        "type": PROBLEM_BASE + "request-timeout",
        "title": "Request head incomplete",
        "status": 408,
        "detail": "the request line and headers did not arrive in time",
    }
).encode()
_RESPONSE_408 = (
    b"HTTP/1.1 408 Request Timeout\r\n"
    + f"Content-Type: {CONTENT_TYPE}\r\n".encode()
    + f"Content-Length: {len(_BODY_408)}\r\n".encode()
    + b"Connection: close\r\n"
    + b"X-Content-Type-Options: nosniff\r\n\r\n"
    + _BODY_408
)

_Handler = Callable[[web.BaseRequest], Awaitable[web.StreamResponse]]


class HeadDeadlines:
    """The deadline shared by the connections of one site, and what it did."""

    def __init__(self, timeout: float) -> None:
        if timeout <= 0:
            raise ValueError("the header timeout must be positive")
        self.timeout = timeout
        #: Connections open now, and connections cut at the deadline so far.
        self.open = 0
        self.cut = 0


class _Guarded(asyncio.Protocol):
    """One connection: aiohttp's own protocol inside, a head deadline around it."""

    def __init__(self, inner: asyncio.Protocol, deadlines: HeadDeadlines) -> None:
        self._inner = inner
        self._deadlines = deadlines
        self._loop = asyncio.get_running_loop()
        self._transport: asyncio.Transport | None = None
        self._timer: asyncio.TimerHandle | None = None
        self._abort: asyncio.TimerHandle | None = None
        self._awaiting_head = True
        self._head_bytes = 0
        self._tail = b""
        self._requests = 0

    # ------------------------------------------------ the asyncio protocol
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self._transport = cast(asyncio.Transport, transport)
        self._deadlines.open += 1
        self._inner.connection_made(transport)
        self._arm()

    def data_received(self, data: bytes) -> None:
        if self._awaiting_head and data:
            if self._timer is None:
                self._arm()
            self._head_bytes += len(data)
            if _HEAD_END in data or _HEAD_END in self._tail + data[:3]:
                self._head_complete()
            else:
                self._tail = (self._tail + data[-3:])[-3:]
        self._inner.data_received(data)

    def eof_received(self) -> bool | None:
        return self._inner.eof_received()

    def connection_lost(self, exc: Exception | None) -> None:
        self._disarm()
        if self._abort is not None:
            self._abort.cancel()
            self._abort = None
        if self._transport is not None:
            self._deadlines.open -= 1
            self._transport = None
        self._inner.connection_lost(exc)

    def pause_writing(self) -> None:
        self._inner.pause_writing()

    def resume_writing(self) -> None:
        self._inner.resume_writing()

    # --------------------------------------- told by the request handler
    def request_started(self) -> None:
        self._requests += 1
        self._head_complete()

    def request_finished(self) -> None:
        # The next head's clock starts at its first byte (data_received).
        self._awaiting_head = True
        self._head_bytes = 0
        self._tail = b""

    # ------------------------------------------------------------- timer
    def _head_complete(self) -> None:
        self._awaiting_head = False
        self._tail = b""
        self._disarm()

    def _arm(self) -> None:
        self._disarm()
        self._timer = self._loop.call_later(self._deadlines.timeout, self._expire)

    def _disarm(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None

    def _expire(self) -> None:
        self._timer = None
        transport = self._transport
        if transport is None or transport.is_closing() or not self._awaiting_head:
            return
        self._deadlines.cut += 1
        log.debug(
            "closing a connection whose request head was incomplete after %gs (%d bytes)",
            self._deadlines.timeout,
            self._head_bytes,
        )
        if self._requests == 0 and self._head_bytes:
            transport.write(_RESPONSE_408)
        transport.close()
        # close() waits for the 408 to flush; a client that reads nothing
        # must not keep the socket that way.
        self._abort = self._loop.call_later(_CLOSE_GRACE, transport.abort)


def _tracking(handler: _Handler) -> _Handler:
    """``handler``, telling the connection when a request starts and ends."""

    async def tracked(request: web.BaseRequest) -> web.StreamResponse:
        transport = request.transport
        guarded = transport.get_protocol() if transport is not None else None
        if not isinstance(guarded, _Guarded):
            return await handler(request)
        guarded.request_started()
        try:
            return await handler(request)
        finally:
            guarded.request_finished()

    tracked.__dict__["_filestore_tracked"] = True
    return tracked


class GuardedSite(web.BaseSite):
    """``web.TCPSite`` with a head deadline on every connection."""

    def __init__(
        self,
        runner: web.BaseRunner,
        host: str,
        port: int,
        *,
        header_timeout: float,
        backlog: int = 128,
        reuse_port: bool = False,
    ) -> None:
        super().__init__(runner, backlog=backlog)
        self.deadlines = HeadDeadlines(header_timeout)
        self._host = host
        self._port = port
        #: SO_REUSEPORT: the workers of ``serve --workers`` each listen on
        #: the same port and the kernel spreads connections between them.
        self._reuse_port = reuse_port

    @property
    def name(self) -> str:
        return f"http://{self._host}:{self.port}"

    @property
    def port(self) -> int:
        """The port listened on (the one chosen, once started on port 0)."""
        server = cast(Any, self._server)
        if server is not None and server.sockets:
            return int(server.sockets[0].getsockname()[1])
        return self._port

    async def start(self) -> None:
        await super().start()
        server = self._runner.server
        assert server is not None
        # Connections read the handler when they are made: wrap it first.
        if not getattr(server.request_handler, "_filestore_tracked", False):
            server.request_handler = _tracking(server.request_handler)
        deadlines = self.deadlines

        def protocol() -> asyncio.Protocol:
            return _Guarded(server(), deadlines)

        self._server = await asyncio.get_running_loop().create_server(
            protocol,
            self._host,
            self._port,
            backlog=self._backlog,
            reuse_port=self._reuse_port or None,
        )
