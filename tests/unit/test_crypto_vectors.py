"""The Wycheproof vectors for C2SP chunked encryption (AES-256 and AES-128).

The vector files live in ``tests/vectors/wycheproof`` (data under Apache-2.0,
see the README there); each vector is one test id.
"""

from __future__ import annotations

import hashlib
import json
import zlib
from pathlib import Path
from typing import Any

import pytest

from filestore.crypto import _chunked
from filestore.errors import IntegrityError

VECTOR_DIR = Path(__file__).parents[1] / "vectors" / "wycheproof"
FILES = (
    "c2sp_chunked_encryption_aes_256_gcm_test.json",
    "c2sp_chunked_encryption_aes_128_gcm_test.json",
)


def _load() -> list[Any]:
    params: list[Any] = []
    if not VECTOR_DIR.is_dir():
        return [
            pytest.param(
                None,
                None,
                marks=pytest.mark.skip(
                    reason=f"Wycheproof vectors not found at {VECTOR_DIR}"
                ),
                id="vectors-missing",
            )
        ]
    for name in FILES:
        doc = json.loads((VECTOR_DIR / name).read_text())
        for group in doc["testGroups"]:
            for test in group["tests"]:
                test_id = f"{group['aead']}-tc{test['tcId']}"
                params.append(pytest.param(group["aead"], test, id=test_id))
    return params


def test_all_vectors_present() -> None:
    if not VECTOR_DIR.is_dir():
        pytest.skip(f"Wycheproof vectors not found at {VECTOR_DIR}")
    assert len(_load()) == 70


@pytest.mark.parametrize(("aead", "test"), _load())
def test_vector(aead: str, test: dict[str, Any]) -> None:
    key = bytes.fromhex(test["key"])
    context = bytes.fromhex(test["ctx"])
    message = zlib.decompress(bytes.fromhex(test["ct"]))

    if "aeadKey" in test:
        # The derivation on its own (the "raw mode" values).
        salt = message[: _chunked.SALT_SIZE]
        aead_key, base_nonce, commitment = _chunked.derive_keys(aead, key, salt, context)
        assert aead_key.hex() == test["aeadKey"]
        assert base_nonce.hex() == test["baseNonce"]
        assert commitment == message[_chunked.SALT_SIZE : _chunked.MESSAGE_HEADER_SIZE]

    if "HeaderFailure" in test["flags"]:
        # Rejected while processing salt and commitment, before any chunk.
        with pytest.raises(IntegrityError):
            _chunked.open_message_header(
                aead, key, context, message[: _chunked.MESSAGE_HEADER_SIZE]
            )

    if test["result"] == "valid":
        plaintext = _chunked.decrypt_message(aead, key, context, message)
        assert len(plaintext) == test["msgLength"]
        assert hashlib.sha512(plaintext).hexdigest() == test["msgSha512"]
        # And our encryptor produces the very same message from it.
        salt = message[: _chunked.SALT_SIZE]
        assert _chunked.encrypt_message(aead, key, context, plaintext, salt) == message
    else:
        assert test["result"] == "invalid"
        result = None
        with pytest.raises(IntegrityError):
            result = _chunked.decrypt_message(aead, key, context, message)
        assert result is None
