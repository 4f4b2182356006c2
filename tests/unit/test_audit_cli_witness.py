"""``filestore audit`` witness flags: bad ones are usage errors (exit 2),
never a verification verdict."""

from __future__ import annotations

import hashlib
from pathlib import Path

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from filestore.audit.cosignature import witness_vkey
from filestore.audit.keys import verifier_key_string
from filestore.cli import main

W = Ed25519PrivateKey.from_private_bytes(hashlib.sha256(b"cli witness").digest())
LOG = Ed25519PrivateKey.from_private_bytes(hashlib.sha256(b"cli log").digest())


@pytest.fixture
def files(tmp_path: Path) -> tuple[str, str]:
    export = tmp_path / "export.jsonl"
    export.write_text("")
    key = tmp_path / "log.vkey"
    key.write_text(verifier_key_string("filestore.audit/x", LOG.public_key()) + "\n")
    return str(export), str(key)


@pytest.mark.parametrize(
    "flags",
    [
        ["--witness", "not-a-vkey"],
        ["--witness", verifier_key_string("filestore.audit/x", LOG.public_key())],
        ["--witness", witness_vkey("w.example/1", W.public_key()), "--min-witnesses", "2"],
        ["--min-witnesses", "1"],
        [
            "--witness",
            witness_vkey("w.example/1", W.public_key()),
            "--witness",
            witness_vkey("w.example/1", LOG.public_key()),
        ],
    ],
)
def test_bad_witness_flags_are_usage_errors(
    files: tuple[str, str], flags: list[str], capsys: pytest.CaptureFixture[str]
) -> None:
    export, key = files
    assert main(["audit", "verify", export, "--public-key", key, *flags]) == 2
    assert "witness" in capsys.readouterr().err


def test_witness_needs_a_log_key_and_a_mode(tmp_path: Path) -> None:
    state = str(tmp_path / "w")
    base = ["audit", "witness", "--state-dir", state, "--name", "w.example/1"]
    assert main([*base, "--print-vkey"]) == 0
    assert main(base) == 2
    log = verifier_key_string("filestore.audit/x", LOG.public_key())
    assert main([*base, "--log-key", log]) == 2  # neither --url nor --listen
    assert main([*base, "--log-key", "garbage", "--url", "http://127.0.0.1:9"]) == 2
    assert (
        main(["audit", "witness", "--state-dir", state, "--name", "bad name", "--print-vkey"]) == 2
    )
