"""API keys: bearer tokens with a role and a tenant, stored only as hashes.

A key reads ``fs_<key id>_<secret>``: 12 hex characters of id (the lookup
handle, safe to show and log) and 43 characters of base64url secret (256
bits). The database keeps SHA-256 of the secret. A fast hash is enough here
because the secret is random and long: there is nothing to brute-force that a
slow password hash would protect.
"""

from __future__ import annotations

import hashlib
import hmac
import re
import secrets
from dataclasses import dataclass

from filestore.errors import AuthError, BadRequest, Forbidden
from filestore.metadata.base import ApiKeyRecord, MetadataStore, Role

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


async def authenticate(store: MetadataStore, authorization: str | None) -> Principal:
    """Resolve an ``Authorization`` header to a principal or raise AuthError.

    Every failure gives the same message, so the answer does not tell which
    key ids exist.
    """
    if not authorization:
        raise AuthError("an API key is required: send 'Authorization: Bearer <key>'")
    scheme, _, token = authorization.partition(" ")
    match = _KEY_RE.match(token.strip())
    if scheme.lower() != "bearer" or not match:
        raise AuthError("the API key is malformed or unknown")
    key_id, secret = match.groups()
    record = await store.api_keys.get(key_id)
    if record is None or record.revoked_at is not None:
        raise AuthError("the API key is malformed or unknown")
    if not hmac.compare_digest(record.secret_hash, _hash(secret)):
        raise AuthError("the API key is malformed or unknown")
    return Principal(key_id=record.key_id, role=record.role, tenant=record.tenant)
