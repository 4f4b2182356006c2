"""File identifiers.

An id is 16 random bytes (128 bits), shown to clients as 22 characters of
unpadded base64url. Storage names are the lowercase hex of the same bytes, so
nothing a client sends ever becomes part of a path or an object key.

No new id begins with ``-``. Shells, ``xargs`` and every argument parser
(ours included) read a word that starts with a dash as an option, so one id
in 64 would otherwise need ``--`` in front of it on a command line. Drawing
again when the first six bits spell ``-`` costs 0.02 bits of the 128 and
keeps the rest uniform. Ids issued before this rule still parse.
"""

from __future__ import annotations

import base64
import binascii
import re

from filestore.crypto.entropy import random_bytes
from filestore.errors import NotFound

ID_BYTES = 16
# The base64url alphabet's index of "-": the value of a leading dash's six bits.
_DASH = 62
_TEXT_RE = re.compile(r"^[A-Za-z0-9_-]{22}$")


def new_file_id() -> bytes:
    """A fresh random file id whose text does not start with ``-``."""
    while True:
        raw = random_bytes(ID_BYTES)
        if raw[0] >> 2 != _DASH:
            return raw


def to_text(file_id: bytes) -> str:
    """The id as clients see it."""
    return base64.urlsafe_b64encode(file_id).rstrip(b"=").decode("ascii")


def from_text(text: str) -> bytes:
    """Parse a client-supplied id; malformed ids are simply not found."""
    if not _TEXT_RE.match(text):
        raise NotFound("no such file")
    try:
        raw = base64.urlsafe_b64decode(text + "==")
    except (binascii.Error, ValueError) as exc:  # pragma: no cover - regex guards it
        raise NotFound("no such file") from exc
    if len(raw) != ID_BYTES or to_text(raw) != text:
        # 22 chars carry 132 bits; reject non-canonical trailing bits so each
        # file has exactly one spelling.
        raise NotFound("no such file")
    return raw


def blob_name(file_id: bytes) -> str:
    """The storage name of a file's blob: lowercase hex, 32 characters."""
    return file_id.hex()
