"""Sealed per-file metadata (file name, content type, checksum)."""

from __future__ import annotations

import os

import pytest

from filestore.crypto import open_fields, seal_fields
from filestore.errors import IntegrityError

DEK = os.urandom(32)
FILE_ID = os.urandom(16)
FIELDS: dict[str, str | int | None] = {
    "filename": "Bericht Q3 \u2013 ünïcode.pdf",
    "content_type": "application/pdf",
    "sha256": "ab" * 32,
    "parts": 3,
    "note": None,
}


def test_round_trip() -> None:
    sealed = seal_fields(DEK, FILE_ID, FIELDS)
    assert sealed[0] == 1
    assert open_fields(DEK, FILE_ID, sealed) == FIELDS
    assert open_fields(DEK, FILE_ID, seal_fields(DEK, FILE_ID, {})) == {}


def test_nothing_in_clear_and_fresh_nonce() -> None:
    sealed = seal_fields(DEK, FILE_ID, FIELDS)
    assert b"pdf" not in sealed and b"Bericht" not in sealed
    assert seal_fields(DEK, FILE_ID, FIELDS) != sealed


def test_length_is_padded() -> None:
    short = seal_fields(DEK, FILE_ID, {"filename": "a"})
    longer = seal_fields(DEK, FILE_ID, {"filename": "a" * 20})
    assert len(short) == len(longer)


def test_wrong_file_id_or_dek_fails() -> None:
    sealed = seal_fields(DEK, FILE_ID, FIELDS)
    with pytest.raises(IntegrityError):
        open_fields(DEK, os.urandom(16), sealed)
    with pytest.raises(IntegrityError):
        open_fields(os.urandom(32), FILE_ID, sealed)


@pytest.mark.parametrize("pos", [0, 1, 12, 13, -1])
def test_tampering_fails(pos: int) -> None:
    sealed = bytearray(seal_fields(DEK, FILE_ID, FIELDS))
    sealed[pos] ^= 0x01
    with pytest.raises(IntegrityError):
        open_fields(DEK, FILE_ID, bytes(sealed))


@pytest.mark.parametrize("cut", [0, 1, 13, 28])
def test_truncated_fails(cut: int) -> None:
    sealed = seal_fields(DEK, FILE_ID, FIELDS)
    with pytest.raises(IntegrityError):
        open_fields(DEK, FILE_ID, sealed[:cut])


@pytest.mark.parametrize("value", [True, 1.5, b"bytes", ["list"]])
def test_only_str_int_none_values(value: object) -> None:
    with pytest.raises(ValueError):
        seal_fields(DEK, FILE_ID, {"x": value})  # type: ignore[dict-item]
