"""How a file's DEK is wrapped under a KEK, for the keyring and the ratchet.

A wrapped DEK is bound to everything the database says about whose key it
is: the KEK id, the file id and the tenant. The binding is the AEAD's
associated data, so a wrapped key copied to another file's row, relabelled
with another KEK id, or a row whose ``tenant`` was changed in the database
fails to unwrap (IntegrityError) instead of handing the file to someone else.

Two layouts exist. Version 2, written since the tenant was bound in, is::

    0x02 ‖ nonce (12) ‖ AES-256-GCM(KEK, nonce, DEK, aad_v2)          61 bytes
    aad_v2 = "filestore/v2/dek-wrap" ‖ 0x00 ‖ kek_id (uint32)
             ‖ file_id (16) ‖ len(tenant) (uint16) ‖ tenant (UTF-8)

Version 1 (60 bytes, no version byte, AAD without the tenant) is still
opened, so files uploaded before the upgrade stay readable, and
:func:`rewrap` turns one into version 2 under the same KEK; the key step
does that to every legacy row after an upgrade. The version byte is itself
covered by the AAD's label: stripping it to pass a version-2 key off as
version 1 fails the tag.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Final

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from filestore.crypto.entropy import random_bytes
from filestore.errors import IntegrityError

__all__ = ["DEK_SIZE", "WRAPPED_SIZE", "DekBinding", "is_legacy", "open_dek", "rewrap", "seal_dek"]

DEK_SIZE: Final = 32
NONCE_SIZE: Final = 12
TAG_SIZE: Final = 16
VERSION: Final = 2
#: Size of a version-2 wrapped DEK.
WRAPPED_SIZE: Final = 1 + NONCE_SIZE + DEK_SIZE + TAG_SIZE
#: Size of a version-1 (pre-tenant) wrapped DEK.
LEGACY_SIZE: Final = NONCE_SIZE + DEK_SIZE + TAG_SIZE
LABEL_V1: Final = b"filestore/v1/dek-wrap"
LABEL_V2: Final = b"filestore/v2/dek-wrap"
MAX_TENANT_BYTES: Final = 0xFFFF


@dataclass(frozen=True)
class DekBinding:
    """Whose DEK this is: what the wrap authenticates besides the KEK id."""

    file_id: bytes
    tenant: str

    def aad(self, kek_id: int) -> bytes:
        tenant = self.tenant.encode("utf-8")
        if len(self.file_id) != 16:
            raise ValueError("a file id is 16 bytes")
        if len(tenant) > MAX_TENANT_BYTES:
            raise ValueError("tenant name too long to bind into a key wrap")
        return b"".join(
            (
                LABEL_V2,
                b"\x00",
                kek_id.to_bytes(4, "big"),
                self.file_id,
                len(tenant).to_bytes(2, "big"),
                tenant,
            )
        )

    def legacy_aad(self, kek_id: int) -> bytes:
        return LABEL_V1 + b"\x00" + kek_id.to_bytes(4, "big") + self.file_id


def seal_dek(aead: AESGCM, kek_id: int, binding: DekBinding, dek: bytes) -> bytes:
    """``dek`` wrapped under the KEK of ``aead`` in the version-2 layout."""
    if len(dek) != DEK_SIZE:
        raise ValueError("a DEK is 32 bytes")
    nonce = random_bytes(NONCE_SIZE)
    sealed = aead.encrypt(nonce, dek, binding.aad(kek_id))
    return bytes([VERSION]) + nonce + sealed


def is_legacy(wrapped: bytes) -> bool:
    """A version-1 wrap, written before the tenant was bound in."""
    return len(wrapped) == LEGACY_SIZE


def open_dek(aead: AESGCM, kek_id: int, binding: DekBinding, wrapped: bytes) -> bytes:
    """The DEK, or IntegrityError (with no detail) if the wrap was altered or
    belongs to another file, tenant or KEK."""
    if len(wrapped) == WRAPPED_SIZE and wrapped[0] == VERSION:
        body, aad = wrapped[1:], binding.aad(kek_id)
    elif is_legacy(wrapped):
        body, aad = wrapped, binding.legacy_aad(kek_id)
    else:
        raise IntegrityError()
    dek: bytes | None
    try:
        dek = aead.decrypt(body[:NONCE_SIZE], body[NONCE_SIZE:], aad)
    except InvalidTag:
        dek = None
    if dek is None:  # raised outside the except block: nothing chained to it
        raise IntegrityError()
    return dek


def rewrap(aead: AESGCM, kek_id: int, binding: DekBinding, wrapped: bytes) -> bytes | None:
    """A legacy wrap re-sealed in the version-2 layout under the same KEK, or
    None if ``wrapped`` is already version 2. IntegrityError as for
    :func:`open_dek`."""
    if not is_legacy(wrapped):
        return None
    dek = open_dek(aead, kek_id, binding, wrapped)
    return seal_dek(aead, kek_id, binding, dek)
