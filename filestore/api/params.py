"""Query parameters, read strictly: known names only, each at most once, in
UTF-8, and never echoed back.

- A repeated name is refused rather than one copy picked: ``ttl=60&ttl=86000``
  means something to whoever sent it (or to a proxy that added one), and
  guessing could keep a file far longer than its owner asked.
- yarl decodes invalid percent-encoded UTF-8 to U+FFFD, so ``filename=%FF``
  would be stored as another name than the one sent; the raw query is
  decoded strictly first.
- An unknown name is not repeated in the error: a client that pasted its API
  key into the URL (``?fs_…``) must not find the key in an error body, nor in
  whatever logs that body. The message lists the names the route takes.
"""

from __future__ import annotations

import urllib.parse
from collections.abc import Collection

from aiohttp import web

from filestore.config import parse_duration
from filestore.errors import BadRequest


def query_params(request: web.Request, allowed: Collection[str]) -> dict[str, str]:
    """The query as one value per name, or BadRequest."""
    try:
        urllib.parse.parse_qsl(
            request.rel_url.raw_query_string, keep_blank_values=True, errors="strict"
        )
    except UnicodeDecodeError as exc:
        raise BadRequest("the query string is not valid UTF-8 once percent-decoded") from exc
    query = request.query
    takes = ", ".join(sorted(allowed)) or "no parameters"
    if any(name not in allowed for name in query):
        raise BadRequest(f"unknown query parameter; this route takes {takes}")
    repeated = sorted(name for name in set(query) if len(query.getall(name)) > 1)
    if repeated:
        raise BadRequest(f"query parameter(s) given more than once: {', '.join(repeated)}")
    return {name: query[name] for name in query}


def parse_ttl(raw: str) -> float:
    """A ``ttl`` value in seconds: ASCII digits only (``\\d`` alone would let
    other scripts' digits through), then the duration syntax of the settings."""
    try:
        if not raw.isascii():
            raise ValueError("not ASCII")
        return parse_duration(raw)
    except ValueError as exc:
        raise BadRequest("ttl must be seconds, or a number with s, m or h") from exc
