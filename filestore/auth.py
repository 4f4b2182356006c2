"""API keys: bearer tokens with a role and a tenant, stored only as hashes.

A key reads ``fs_<key id>_<secret>``: 12 hex characters of id (the lookup
handle, safe to show and log) and 43 characters of base64url secret (256
bits). The database keeps SHA-256 of the secret. A fast hash is enough here
because the secret is random and long: there is nothing to brute-force that a
slow password hash would protect.

Verified keys are remembered for :data:`KEY_CACHE_TTL` (a second by default):
a small upload otherwise spends a fifth of its trips to the database threads
on looking up the same key again. The secret is still checked on every
request, against the remembered hash; a key revoked by ``filestore keys
revoke`` (another process) stops working within that second.
"""

from __future__ import annotations

import hashlib
import hmac
import re
import secrets
from collections import OrderedDict
from dataclasses import dataclass

from filestore.clock import Clock
from filestore.errors import AuthError, BadRequest, Forbidden
from filestore.metadata.base import ApiKeyRecord, ApiKeyStore, MetadataStore, Role

_KEY_RE = re.compile(r"^fs_([0-9a-f]{12})_([A-Za-z0-9_-]{43})$")
_TENANT_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")


@dataclass(frozen=True)
class Principal:
    """Who is calling: the key id (never the secret), role and tenant."""

    key_id: str
    role: Role
    tenant: str

    def require(self, *roles: Role) -> None:
        """Raise Forbidden unless the caller has one of ``roles``."""
        if self.role not in roles:
            raise Forbidden(f"this action needs the {' or '.join(roles)} role")


def _hash(secret: str) -> bytes:
    return hashlib.sha256(secret.encode("ascii")).digest()


def validate_tenant(tenant: str) -> str:
    if not _TENANT_RE.match(tenant):
        raise BadRequest(
            "a tenant is 1-64 characters of letters, digits, '.', '_' or '-', "
            "starting with a letter or digit"
        )
    return tenant


async def create_key(
    store: MetadataStore, role: Role, tenant: str, now: float, label: str = ""
) -> tuple[str, ApiKeyRecord]:
    """Make and store a new key; returns the full key (shown once) and its record."""
    validate_tenant(tenant)
    key_id = secrets.token_hex(6)
    secret = secrets.token_urlsafe(32)
    record = ApiKeyRecord(
        key_id=key_id,
        secret_hash=_hash(secret),
        role=role,
        tenant=tenant,
        created_at=now,
        label=label,
    )
    await store.api_keys.add(record)
    return f"fs_{key_id}_{secret}", record


class KeyCache:
    """Live key records, each remembered for ``ttl`` seconds of ``clock``.

    Only keys that were found and not revoked are kept, so an unknown id
    always goes to the database and a wrong guess is never remembered. At
    most ``max_entries`` are held (the oldest lookup goes first), so a flood
    of distinct valid keys cannot grow it. ``ttl`` 0 turns it off.
    """

    def __init__(self, clock: Clock, ttl: float, max_entries: int = 4096) -> None:
        self._clock = clock
        self._ttl = ttl
        self._max = max_entries
        self._entries: OrderedDict[str, tuple[float, ApiKeyRecord]] = OrderedDict()
        self._revocations: int | None = None

    def _check(self, keys: ApiKeyStore) -> None:
        """Drop everything once ``keys`` has revoked something since."""
        if keys.revocations != self._revocations:
            self._entries.clear()
            self._revocations = keys.revocations

    def get(self, keys: ApiKeyStore, key_id: str) -> ApiKeyRecord | None:
        self._check(keys)
        entry = self._entries.get(key_id)
        if entry is None:
            return None
        fetched, record = entry
        age = self._clock.now() - fetched
        if not 0 <= age < self._ttl:  # a clock stepped back does not extend it
            del self._entries[key_id]
            return None
        return record

    def put(self, keys: ApiKeyStore, record: ApiKeyRecord, revocations: int) -> None:
        """Remember ``record``, read when ``keys.revocations`` was
        ``revocations`` (a revocation during the read voids it)."""
        self._check(keys)
        if self._ttl <= 0 or record.revoked_at is not None or revocations != self._revocations:
            return
        self._entries[record.key_id] = (self._clock.now(), record)
        self._entries.move_to_end(record.key_id)
        while len(self._entries) > self._max:
            self._entries.popitem(last=False)


async def authenticate(
    store: MetadataStore, authorization: str | None, cache: KeyCache | None = None
) -> Principal:
    """Resolve an ``Authorization`` header to a principal or raise AuthError.

    Every failure gives the same message, so the answer does not tell which
    key ids exist. With a ``cache``, a key verified within its ttl is not
    looked up again; its secret is still compared.
    """
    if not authorization:
        raise AuthError("an API key is required: send 'Authorization: Bearer <key>'")
    scheme, _, token = authorization.partition(" ")
    match = _KEY_RE.match(token.strip())
    if scheme.lower() != "bearer" or not match:
        raise AuthError("the API key is malformed or unknown")
    key_id, secret = match.groups()
    keys = store.api_keys
    record = cache.get(keys, key_id) if cache is not None else None
    fetched = record is None
    revocations = keys.revocations
    if record is None:
        record = await keys.get(key_id)
        if record is None or record.revoked_at is not None:
            raise AuthError("the API key is malformed or unknown")
    if not hmac.compare_digest(record.secret_hash, _hash(secret)):
        raise AuthError("the API key is malformed or unknown")
    if fetched and cache is not None:
        # Only a fresh read starts the ttl: a key in constant use is still
        # re-read once per ttl, so a revocation elsewhere is seen.
        cache.put(keys, record, revocations)
    return Principal(key_id=record.key_id, role=record.role, tenant=record.tenant)
