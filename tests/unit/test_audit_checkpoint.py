"""Signed notes and checkpoints: the Go reference note, vkeys, formats, tampering."""

from __future__ import annotations

import base64
import hashlib
import re

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ec import SECP256R1, generate_private_key
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from filestore.audit import (
    AuditVerificationError,
    Checkpoint,
    checkpoint_of,
    key_id,
    load_public_key,
    load_verifier,
    parse_and_verify,
    parse_verifier_key,
    peek_checkpoint,
    sign_checkpoint,
    verifier_key_string,
)
from filestore.audit.keys import raw_public_key
from filestore.audit.merkle import EMPTY_ROOT, root
from filestore.audit.note import open_note, sign_note, signature_line
from filestore.crypto import public_key_pem

# golang.org/x/mod/sumdb/note (note.go's package documentation and note_test.go).
GO_VKEY = "PeterNeumann+c74f20a3+ARpc2QcUPDhMQegwxbzhKqiBfsVkmqq/LDE4izWy10TW"
GO_SKEY = "PRIVATE+KEY+PeterNeumann+c74f20a3+AYEKFALVFGyNhPJEMzD1QIDr+Y7hfZx09iUvxdXHKDFz"
GO_TEXT = (
    "If you think cryptography is the answer to your problem,\n"
    "then you don't know what your problem is.\n"
)
GO_NOTE = (
    GO_TEXT + "\n— PeterNeumann x08go/ZJkuBS9UG/SffcvIAQxVBtiFupLLr8pAcElZInNIuGUgYN1FFYC2pZSNXg"
    "KvqfqdngotpRZb6KE6RyyBwJnAM=\n"
)

KEY = Ed25519PrivateKey.from_private_bytes(hashlib.sha256(b"checkpoint test key").digest())
ORIGIN = "filestore.audit/test"
LEAVES = [hashlib.sha256(bytes([i])).digest() for i in range(11)]
T = 1_800_000_000.25


def go_private_key() -> Ed25519PrivateKey:
    raw = base64.b64decode(GO_SKEY.split("+", 4)[4])
    assert raw[0] == 1
    return Ed25519PrivateKey.from_private_bytes(raw[1:])


def test_go_reference_note_opens_and_is_reproduced() -> None:
    name, public = parse_verifier_key(GO_VKEY)
    assert name == "PeterNeumann"
    assert open_note(GO_NOTE, public) == GO_TEXT
    assert open_note(GO_NOTE, public, "PeterNeumann") == GO_TEXT
    # Ed25519 is deterministic, so signing the text again gives the same note.
    assert sign_note(GO_TEXT, go_private_key(), "PeterNeumann") == GO_NOTE
    assert verifier_key_string("PeterNeumann", go_private_key().public_key()) == GO_VKEY
    with pytest.raises(AuditVerificationError, match="does not verify"):
        open_note(GO_NOTE.replace("problem,", "problem;"), public)


def test_key_id_is_the_c2sp_derivation() -> None:
    raw = raw_public_key(KEY.public_key())
    expected = hashlib.sha256(ORIGIN.encode() + b"\n\x01" + raw).digest()[:4]
    assert key_id(ORIGIN, KEY.public_key()) == expected
    vkey = verifier_key_string(ORIGIN, KEY.public_key())
    material = base64.b64encode(b"\x01" + raw).decode()
    assert vkey == f"{ORIGIN}+{expected.hex()}+{material}"
    assert load_verifier(vkey)[1] == ORIGIN
    tampered = vkey.replace(expected.hex(), "00000000")
    with pytest.raises(AuditVerificationError, match="key id"):
        parse_verifier_key(tampered)
    with pytest.raises(ValueError):
        verifier_key_string("has space", KEY.public_key())


def test_checkpoint_text_and_signature_line() -> None:
    cp = checkpoint_of(ORIGIN, LEAVES, T + 0.0004)
    assert cp.time == T
    note = sign_checkpoint(cp, KEY, ORIGIN)
    text, sig = note.split("\n\n")
    assert text + "\n" == (
        f"{ORIGIN}\n11\n{base64.b64encode(root(LEAVES)).decode()}\n"
        f"chain-head {LEAVES[-1].hex()}\ntime 2027-01-15T08:00:00.250Z\n"
    )
    m = re.fullmatch(r"— (\S+) (\S+)\n", sig)
    assert m is not None and m.group(1) == ORIGIN
    blob = base64.b64decode(m.group(2))
    assert len(blob) == 68 and blob[:4] == key_id(ORIGIN, KEY.public_key())
    KEY.public_key().verify(blob[4:], (text + "\n").encode())
    assert parse_and_verify(note, KEY.public_key()) == cp
    assert parse_and_verify(note, KEY.public_key(), ORIGIN) == cp
    assert peek_checkpoint(note) == cp


def test_empty_log_checkpoint() -> None:
    cp = checkpoint_of(ORIGIN, [], T)
    assert (cp.size, cp.root, cp.chain_head) == (0, EMPTY_ROOT, "0" * 64)
    assert parse_and_verify(sign_checkpoint(cp, KEY, ORIGIN), KEY.public_key()) == cp
    with pytest.raises(ValueError):
        Checkpoint(ORIGIN, 0, root(LEAVES), "0" * 64, T)


def test_wrong_key_or_name_fails() -> None:
    note = sign_checkpoint(checkpoint_of(ORIGIN, LEAVES, T), KEY, ORIGIN)
    other = Ed25519PrivateKey.generate().public_key()
    with pytest.raises(AuditVerificationError, match="no signature by the given public key"):
        parse_and_verify(note, other)
    with pytest.raises(AuditVerificationError, match="no signature by key 'elsewhere'"):
        parse_and_verify(note, KEY.public_key(), "elsewhere")


def test_cosignatures_by_other_keys_are_ignored_but_ours_is_required() -> None:
    cp = checkpoint_of(ORIGIN, LEAVES, T)
    witness = Ed25519PrivateKey.generate()
    note = sign_checkpoint(cp, KEY, ORIGIN) + signature_line(cp.text(), witness, "witness.example")
    assert parse_and_verify(note, KEY.public_key()) == cp
    assert parse_and_verify(note, witness.public_key(), "witness.example") == cp
    only_witness = sign_checkpoint(cp, witness, "witness.example")
    with pytest.raises(AuditVerificationError, match="no signature"):
        parse_and_verify(only_witness, KEY.public_key())


def _flip_signature_byte(note: str) -> str:
    text, sig = note.split("\n\n")
    prefix, b64 = sig.rstrip("\n").rsplit(" ", 1)
    blob = bytearray(base64.b64decode(b64))
    blob[10] ^= 1
    return f"{text}\n\n{prefix} {base64.b64encode(bytes(blob)).decode()}\n"


@pytest.mark.parametrize(
    "tamper",
    [
        lambda n: n.replace("\n11\n", "\n12\n", 1),
        lambda n: n.replace(f"chain-head {LEAVES[-1].hex()}", f"chain-head {LEAVES[0].hex()}"),
        lambda n: n.replace(".250Z", ".251Z", 1),
        lambda n: n.replace(ORIGIN, ORIGIN + "x", 1),
        _flip_signature_byte,
    ],
)
def test_any_change_breaks_the_signature(tamper: object) -> None:
    note = sign_checkpoint(checkpoint_of(ORIGIN, LEAVES, T), KEY, ORIGIN)
    assert callable(tamper)
    bad = tamper(note)
    assert bad != note
    with pytest.raises(AuditVerificationError):
        parse_and_verify(bad, KEY.public_key())


def test_root_change_breaks_the_signature() -> None:
    cp = checkpoint_of(ORIGIN, LEAVES, T)
    note = sign_checkpoint(cp, KEY, ORIGIN)
    other = base64.b64encode(root(LEAVES[:-1])).decode()
    with pytest.raises(AuditVerificationError, match="does not verify"):
        parse_and_verify(note.replace(base64.b64encode(cp.root).decode(), other), KEY.public_key())


@pytest.mark.parametrize(
    "text",
    [
        f"{ORIGIN}\n011\n{base64.b64encode(EMPTY_ROOT).decode()}\nchain-head {'0' * 64}\n"
        "time 2027-01-15T08:00:00.250Z\n",
        f"{ORIGIN}\n11\n{base64.b64encode(EMPTY_ROOT).decode()}\ntime 2027-01-15T08:00:00.250Z\n",
        f"{ORIGIN}\n11\n{base64.b64encode(EMPTY_ROOT).decode()}\nchain-head {'0' * 64}\n"
        "time 2027-01-15T08:00:00Z\n",
        f"{ORIGIN}\n11\n{base64.b64encode(EMPTY_ROOT).decode()}\nchain-head {'0' * 64}\n"
        "time 2027-01-15T08:00:00.250Z\nextra line\n",
        f"{ORIGIN}\n11\n{base64.b64encode(EMPTY_ROOT[:31]).decode()}\nchain-head {'0' * 64}\n"
        "time 2027-01-15T08:00:00.250Z\n",
        f"{ORIGIN}\n11\n{base64.b64encode(EMPTY_ROOT).decode()}\nchain-head {'A' * 64}\n"
        "time 2027-01-15T08:00:00.250Z\n",
    ],
)
def test_malformed_checkpoints_are_refused_even_when_signed(text: str) -> None:
    with pytest.raises(AuditVerificationError):
        parse_and_verify(sign_note(text, KEY, ORIGIN), KEY.public_key())


@pytest.mark.parametrize(
    "note",
    ["", "no blank line\n", "text\n\n", "text\n\n— name !!!\n", "text\n\nname abc\n", "a\x00\n\n"],
)
def test_malformed_notes_are_refused(note: str) -> None:
    with pytest.raises(AuditVerificationError):
        open_note(note, KEY.public_key())


def test_public_key_loads_from_pem_or_vkey() -> None:
    public = KEY.public_key()
    pem = public_key_pem(KEY)
    for data in (pem, pem.decode(), verifier_key_string(ORIGIN, public) + "\n"):
        assert raw_public_key(load_public_key(data)) == raw_public_key(public)
    assert load_verifier(pem)[1] is None
    ec_pem = (
        generate_private_key(SECP256R1())
        .public_key()
        .public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
    )
    for bad in (ec_pem, b"-----BEGIN PUBLIC KEY-----\ngarbage\n-----END PUBLIC KEY-----\n", "x+y"):
        with pytest.raises(AuditVerificationError):
            load_public_key(bad)
