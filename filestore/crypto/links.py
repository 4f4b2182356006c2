"""Signed download links: a URL a client hands to a downstream service that
has no API key.

A link names the file, an expiry and an HMAC-SHA256 tag over both and the
owning tenant, under a secret kept in its own key file (0600) — never one of
the encryption or audit keys, so leaking it exposes only what links expose.
A link grants reading one file until the earlier of its own expiry and the
file's; deleting the file kills every link to it. There is no per-link
revocation: rotate the link key to revoke them all.

The same secret also keys the operator status page's sessions and sign-in
links, through a sub-key derived for that purpose only (:meth:`LinkSigner.subkey`):
every instance already shares it, and a tag made for one purpose is never
valid for another. Rotating the link key also ends every status session.
"""

from __future__ import annotations

import base64
import binascii
import contextlib
import hashlib
import hmac
import secrets
from pathlib import Path

from filestore.crypto._files import ensure_private_dir, read_private_file, write_private_file
from filestore.errors import ConfigError, NotFound

KEY_SIZE = 32
_DOMAIN = b"filestore/v1/download-link\x00"
_SUBKEY = b"filestore/v1/link-key-subkey\x00"


class LinkSigner:
    """Signs and checks download links under one secret."""

    __slots__ = ("_key",)

    def __init__(self, key: bytes) -> None:
        if len(key) != KEY_SIZE:
            raise ValueError("a link key is 32 bytes")
        self._key = key

    def __repr__(self) -> str:
        return "LinkSigner(<secret>)"

    def subkey(self, purpose: bytes) -> bytes:
        """A 32-byte key for ``purpose`` (e.g. ``b"status-session"``),
        HMAC-SHA256 of the label under this secret: independent of the link
        tags and of every other purpose's key."""
        return hmac.new(self._key, _SUBKEY + purpose, hashlib.sha256).digest()

    def _tag(self, file_id: bytes, tenant: str, expires: int) -> bytes:
        message = _DOMAIN + file_id + b"\x00" + tenant.encode() + b"\x00" + str(expires).encode()
        return hmac.new(self._key, message, hashlib.sha256).digest()

    def sign(self, file_id: bytes, tenant: str, expires: int) -> str:
        """The ``signature`` query value for a link valid until ``expires``."""
        return base64.urlsafe_b64encode(self._tag(file_id, tenant, expires)).rstrip(b"=").decode()

    def verify(self, file_id: bytes, tenant: str, expires: str, signature: str, now: float) -> None:
        """Raise NotFound unless the link is authentic and not expired — the
        same answer as for a file that does not exist, so a forged link
        cannot probe which ids exist."""
        try:
            when = int(expires)
            tag = base64.urlsafe_b64decode(signature + "=" * (-len(signature) % 4))
        except (ValueError, binascii.Error) as exc:
            raise NotFound("no such file") from exc
        if not expires.isdigit() or not hmac.compare_digest(tag, self._tag(file_id, tenant, when)):
            raise NotFound("no such file")
        if now >= when:
            raise NotFound("no such file")


def load_or_create_link_key(path: Path) -> LinkSigner:
    """Read the link key file, creating it (0600) on first start. Blocking."""
    try:
        raw = read_private_file(path)
    except FileNotFoundError:
        ensure_private_dir(path.parent)
        # Another process starting at the same moment may win; use its key.
        with contextlib.suppress(FileExistsError):
            write_private_file(path, secrets.token_bytes(KEY_SIZE), replace=False)
        raw = read_private_file(path)
    if len(raw) != KEY_SIZE:
        raise ConfigError(f"link key file {path} is not a 32-byte key")
    return LinkSigner(raw)
