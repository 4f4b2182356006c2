"""Random bytes for the request path: keys, nonces, salts and ids.

``os.urandom`` makes a ``getrandom`` system call and releases the GIL around
it. On the event loop, with the storage and database threads waiting for the
GIL, each release hands the interpreter to one of them and the loop then
waits to take it back: the six draws of a 4 KiB upload (file id, DEK, salt,
wrap nonce, sealed-fields nonce, request id) were 16 % of the loop's busy
time under load. ``ssl.RAND_bytes`` draws from OpenSSL's DRBG instead, the
generator ``cryptography`` itself uses: seeded and periodically reseeded from
the kernel, reseeded in a forked child (``serve --workers``), no system call
per draw and the GIL kept. Long-lived secrets made once (KEKs, signing and
link keys) still come from ``os.urandom``.
"""

from __future__ import annotations

import ssl


def random_bytes(count: int) -> bytes:
    """``count`` cryptographically strong random bytes."""
    return ssl.RAND_bytes(count)


def random_hex(count: int) -> str:
    """``count`` random bytes as lowercase hex (ids, names)."""
    return ssl.RAND_bytes(count).hex()
