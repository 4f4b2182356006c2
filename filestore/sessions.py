"""Operator sessions for the status page, and the sign-in links that open one.

A **session** is a cookie value ``s1.<key id>.<expires>.<tag>``: the id of
the operator API key that signed in (never its secret), when the session
ends (Unix seconds), and an HMAC-SHA256 tag over both. A **sign-in link**
token (``filestore status-link``) is ``l1.<key id>.<expires>.<nonce>.<tag>``:
the same, plus a random nonce so each link can be used once per process.

Both are keyed by sub-keys of the link-signing secret
(:meth:`filestore.crypto.links.LinkSigner.subkey`; every instance shares
it), one per kind, so a link token is never a session and neither is ever a
download link. Tags are compared in constant time. A session lasts at most
:data:`SESSION_TTL` and a link at most :data:`LINK_TTL_MAX`, also when a tag
claims longer. Checking a value here says only that this server made it and
that it has not run out: the caller must still find the key live and of the
operator role (``filestore.api.status_page``), so revoking the key ends its
sessions at their next request.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import re
import secrets
from dataclasses import dataclass

from filestore.crypto.links import LinkSigner

SESSION_TTL = 12 * 3600
LINK_TTL_DEFAULT = 15 * 60
LINK_TTL_MAX = 3600
_SESSION = re.compile(r"s1\.([0-9a-f]{12})\.([0-9]{1,12})\.([A-Za-z0-9_-]{43})")
_LINK = re.compile(r"l1\.([0-9a-f]{12})\.([0-9]{1,12})\.([A-Za-z0-9_-]{22})\.([A-Za-z0-9_-]{43})")
#: What a link token looks like (for the route's parameter check).
LINK_TOKEN_PATTERN = _LINK.pattern


def _b64(raw: bytes) -> str:
    return base64.urlsafe_b64encode(raw).rstrip(b"=").decode("ascii")


@dataclass(frozen=True)
class Session:
    """A checked session: whose key, and when it ends (Unix seconds)."""

    key_id: str
    expires: int


@dataclass(frozen=True)
class SignIn:
    """A checked sign-in link: whose key, until when, and its nonce."""

    key_id: str
    expires: int
    nonce: str


class SessionSigner:
    """Makes and checks session cookies and sign-in link tokens."""

    __slots__ = ("_link", "_session")

    def __init__(self, links: LinkSigner) -> None:
        self._session = links.subkey(b"status-session")
        self._link = links.subkey(b"status-link")

    def __repr__(self) -> str:
        return "SessionSigner(<secret>)"

    @staticmethod
    def _tag(key: bytes, *parts: str) -> str:
        return _b64(hmac.new(key, "\x00".join(parts).encode("ascii"), hashlib.sha256).digest())

    # ------------------------------------------------------------ sessions
    def session(self, key_id: str, now: float, ttl: int = SESSION_TTL) -> tuple[str, int]:
        """A session cookie value for ``key_id`` and when it ends."""
        expires = int(now) + min(ttl, SESSION_TTL)
        return f"s1.{key_id}.{expires}.{self._tag(self._session, key_id, str(expires))}", expires

    def check_session(self, value: str, now: float) -> Session | None:
        """A session this server made that has not ended, or None (forged,
        altered, expired, or not a session at all)."""
        match = _SESSION.fullmatch(value)
        if match is None:
            return None
        key_id, expires, tag = match.groups()
        good = self._tag(self._session, key_id, expires)
        if not hmac.compare_digest(tag.encode("ascii"), good.encode("ascii")):
            return None
        if not now < int(expires) <= now + SESSION_TTL:
            return None
        return Session(key_id, int(expires))

    # --------------------------------------------------------------- links
    def link_token(self, key_id: str, now: float, ttl: int = LINK_TTL_DEFAULT) -> str:
        """A sign-in link token for ``key_id``, valid ``ttl`` seconds (at
        most :data:`LINK_TTL_MAX`)."""
        if not 0 < ttl <= LINK_TTL_MAX:
            raise ValueError(f"a sign-in link lasts at most {LINK_TTL_MAX} seconds")
        expires = str(int(now) + ttl)
        nonce = _b64(secrets.token_bytes(16))
        return f"l1.{key_id}.{expires}.{nonce}.{self._tag(self._link, key_id, expires, nonce)}"

    def check_link(self, token: str, now: float) -> SignIn | None:
        """The sign-in a link token this server made grants, or None."""
        match = _LINK.fullmatch(token)
        if match is None:
            return None
        key_id, expires, nonce, tag = match.groups()
        good = self._tag(self._link, key_id, expires, nonce)
        if not hmac.compare_digest(tag.encode("ascii"), good.encode("ascii")):
            return None
        if not now < int(expires) <= now + LINK_TTL_MAX:
            return None
        return SignIn(key_id, int(expires), nonce)


class UsedLinks:
    """Nonces of sign-in links already used in this process, forgotten once
    the link would have expired anyway (so the set stays small)."""

    def __init__(self) -> None:
        self._used: dict[str, int] = {}

    def claim(self, sign_in: SignIn, now: float) -> bool:
        """True the first time a link is used here, False after."""
        for nonce in [n for n, until in self._used.items() if until <= now]:
            del self._used[nonce]
        if sign_in.nonce in self._used:
            return False
        self._used[sign_in.nonce] = sign_in.expires
        return True
