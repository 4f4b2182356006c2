"""The ratchet hand-over (filestore.crypto.join).

Besides the object API, the messages are rebuilt here from the layout and
derivations written in the module docstring. That pins the wire format, lets
the tests forge messages with valid MACs (to reach the checks behind the
MAC), and plays an attacker who holds the cluster secret and a recording.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import os
import struct
from pathlib import Path

import pytest
from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey, X25519PublicKey
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from filestore.crypto.join import (
    REQUEST_SIZE,
    RESPONSE_SIZE,
    JoinRequest,
    answer_join,
    load_cluster_secret,
)
from filestore.crypto.ratchet import RatchetState
from filestore.errors import AuthError, ConfigError

NOW = 1_800_000_000.0
PSK = hashlib.sha512(b"cluster secret").digest()  # 64 bytes
OTHER_PSK = hashlib.sha512(b"another cluster").digest()
SECRET = hashlib.sha256(b"the ratchet secret").digest()
STATE = RatchetState(NOW - 7200.0, 3600.0, 3, SECRET)
MESSAGE = "the ratchet hand-over failed authentication"


# ------------------------------------------------------------ the spec, again
def psk_keys(psk: bytes) -> tuple[bytes, bytes, bytes]:
    okm = HKDF(hashes.SHA256(), 96, salt=None, info=b"filestore/v1/join-psk").derive(psk)
    return okm[:32], okm[32:64], okm[64:]


def mac(key: bytes, *parts: bytes) -> bytes:
    return hmac.new(key, b"".join(parts), hashlib.sha256).digest()


def session_key(shared: bytes, psk: bytes, request: bytes, header: bytes) -> bytes:
    transcript = hashlib.sha256(b"filestore/v1/join-transcript" + request + header).digest()
    salt = psk_keys(psk)[2]
    return HKDF(hashes.SHA256(), 32, salt=salt, info=b"filestore/v1/join" + transcript).derive(
        shared
    )


def spec_request(
    psk: bytes, now: float, public: bytes, *, version: int = 1, kind: int = 1
) -> bytes:
    body = struct.pack(">BBQ", version, kind, round(now * 1000)) + os.urandom(16) + public
    return body + mac(psk_keys(psk)[0], body)


def spec_response(
    psk: bytes, request: bytes, plain: bytes, *, version: int = 1, kind: int = 2
) -> bytes:
    """A response built by the documented recipe (what a peer must send)."""
    private = X25519PrivateKey.generate()
    header = bytes([version, kind]) + private.public_key().public_bytes_raw()
    joiner = X25519PublicKey.from_public_bytes(request[26:58])
    key = session_key(private.exchange(joiner), psk, request, header)
    nonce = os.urandom(12)
    body = header + nonce + AESGCM(key).encrypt(nonce, plain, request + header)
    return body + mac(psk_keys(psk)[1], request, body)


def pack_state(genesis: float, period: float, epoch: int, secret: bytes) -> bytes:
    return struct.pack(">ddI32s", genesis, period, epoch, secret)


def flipped(data: bytes, i: int) -> bytes:
    out = bytearray(data)
    out[i] ^= 0x01
    return bytes(out)


def assert_auth_error(call: object) -> None:
    with pytest.raises(AuthError) as err:
        call()  # type: ignore[operator]
    assert str(err.value) == MESSAGE


# ------------------------------------------------------------------ happy path
def test_the_state_arrives_intact() -> None:
    request = JoinRequest.new(PSK, NOW)
    assert len(request.message) == REQUEST_SIZE == 90
    assert bytes(request) == request.message
    response = answer_join(PSK, request.message, STATE, NOW + 1.0)
    assert len(response) == RESPONSE_SIZE == 146
    state = request.open_response(response)
    assert state == STATE
    assert state.secret == SECRET


def test_the_messages_have_the_documented_layout() -> None:
    request = JoinRequest.new(PSK, NOW)
    msg = request.message
    assert msg[:2] == b"\x01\x01"
    assert struct.unpack(">Q", msg[2:10])[0] == round(NOW * 1000)
    assert request._private is not None
    assert msg[26:58] == request._private.public_key().public_bytes_raw()
    assert hmac.compare_digest(msg[58:], mac(psk_keys(PSK)[0], msg[:58]))
    response = answer_join(PSK, msg, STATE, NOW)
    assert response[:2] == b"\x01\x02"
    assert hmac.compare_digest(response[114:], mac(psk_keys(PSK)[1], msg, response[:114]))


def test_a_response_built_from_the_documentation_is_accepted() -> None:
    request = JoinRequest.new(PSK, NOW)
    response = spec_response(PSK, request.message, pack_state(1.0e9, 60.0, 7, SECRET))
    assert request.open_response(response) == RatchetState(1.0e9, 60.0, 7, SECRET)


def test_a_request_built_from_the_documentation_is_answered() -> None:
    private = X25519PrivateKey.generate()
    request = spec_request(PSK, NOW, private.public_key().public_bytes_raw())
    response = answer_join(PSK, request, STATE, NOW)
    header = response[:34]
    key = session_key(
        private.exchange(X25519PublicKey.from_public_bytes(header[2:])), PSK, request, header
    )
    plain = AESGCM(key).decrypt(response[34:46], response[46:114], request + header)
    assert plain == pack_state(STATE.genesis, STATE.period, STATE.epoch, SECRET)


def test_each_exchange_uses_fresh_keys_and_nonces() -> None:
    one, two = JoinRequest.new(PSK, NOW), JoinRequest.new(PSK, NOW)
    assert one.message[10:58] != two.message[10:58]  # nonce and public key
    r1 = answer_join(PSK, one.message, STATE, NOW)
    r2 = answer_join(PSK, one.message, STATE, NOW)
    assert r1[2:34] != r2[2:34]  # the peer's ephemeral key
    assert r1[46:114] != r2[46:114]


# ---------------------------------------------------------------- refusals
def test_a_wrong_cluster_secret_is_refused_on_both_sides() -> None:
    request = JoinRequest.new(OTHER_PSK, NOW)
    assert_auth_error(lambda: answer_join(PSK, request.message, STATE, NOW))
    # A response under another PSK (to a request it could see) is refused too.
    request = JoinRequest.new(PSK, NOW)
    forged = spec_response(OTHER_PSK, request.message, pack_state(1.0, 60.0, 1, SECRET))
    assert_auth_error(lambda: request.open_response(forged))
    # and the genuine answer still opens afterwards
    assert request.open_response(answer_join(PSK, request.message, STATE, NOW)) == STATE


@pytest.mark.parametrize("index", range(REQUEST_SIZE))
def test_every_byte_of_the_request_is_authenticated(index: int) -> None:
    request = JoinRequest.new(PSK, NOW)
    assert_auth_error(lambda: answer_join(PSK, flipped(request.message, index), STATE, NOW))


@pytest.mark.parametrize("index", range(RESPONSE_SIZE))
def test_every_byte_of_the_response_is_authenticated(index: int) -> None:
    request = JoinRequest.new(PSK, NOW)
    response = answer_join(PSK, request.message, STATE, NOW)
    assert_auth_error(lambda: request.open_response(flipped(response, index)))
    assert request.open_response(response) == STATE  # a failure does not use it up


def test_truncated_or_extended_messages_are_refused() -> None:
    request = JoinRequest.new(PSK, NOW)
    for n in range(REQUEST_SIZE):
        assert_auth_error(lambda n=n: answer_join(PSK, request.message[:n], STATE, NOW))
    assert_auth_error(lambda: answer_join(PSK, request.message + b"\x00", STATE, NOW))
    response = answer_join(PSK, request.message, STATE, NOW)
    for n in range(RESPONSE_SIZE):
        assert_auth_error(lambda n=n: request.open_response(response[:n]))
    assert_auth_error(lambda: request.open_response(response + b"\x00"))
    assert_auth_error(lambda: answer_join(PSK, bytearray(request.message), STATE, NOW))  # type: ignore[arg-type]
    assert request.open_response(response) == STATE


@pytest.mark.parametrize(("version", "kind"), [(2, 1), (0, 1), (255, 1), (1, 2), (1, 0)])
def test_a_request_with_a_valid_mac_but_another_version_or_kind_is_refused(
    version: int, kind: int
) -> None:
    public = X25519PrivateKey.generate().public_key().public_bytes_raw()
    request = spec_request(PSK, NOW, public, version=version, kind=kind)
    assert_auth_error(lambda: answer_join(PSK, request, STATE, NOW))
    # the same request with version 1, kind 1 is fine
    answer_join(PSK, spec_request(PSK, NOW, public), STATE, NOW)


@pytest.mark.parametrize(("version", "kind"), [(2, 2), (0, 2), (1, 1), (1, 3)])
def test_a_response_with_a_valid_mac_but_another_version_or_kind_is_refused(
    version: int, kind: int
) -> None:
    request = JoinRequest.new(PSK, NOW)
    plain = pack_state(1.0e9, 60.0, 7, SECRET)
    assert_auth_error(
        lambda: request.open_response(
            spec_response(PSK, request.message, plain, version=version, kind=kind)
        )
    )
    assert request.open_response(spec_response(PSK, request.message, plain)).epoch == 7


@pytest.mark.parametrize(
    "plain",
    [
        pack_state(1.0e9, 60.0, 0, SECRET),  # epoch 0
        pack_state(1.0e9, 0.0, 7, SECRET),  # period 0
        pack_state(float("nan"), 60.0, 7, SECRET),
        pack_state(-1.0, 60.0, 7, SECRET),
    ],
)
def test_an_authentic_response_with_an_impossible_state_is_refused(plain: bytes) -> None:
    request = JoinRequest.new(PSK, NOW)
    assert_auth_error(lambda: request.open_response(spec_response(PSK, request.message, plain)))


def test_stale_and_future_dated_requests_are_refused() -> None:
    request = JoinRequest.new(PSK, NOW)
    for now in (NOW + 60.0, NOW - 60.0, NOW):
        answer_join(PSK, request.message, STATE, now)  # inside the window
    for now in (NOW + 60.5, NOW - 60.5, NOW + 86_400.0):
        assert_auth_error(lambda now=now: answer_join(PSK, request.message, STATE, now))
    answer_join(PSK, request.message, STATE, NOW + 250.0, max_skew=300.0)
    assert_auth_error(lambda: answer_join(PSK, request.message, STATE, NOW + 11.0, max_skew=10.0))


def test_a_replayed_request_yields_nothing_new() -> None:
    request = JoinRequest.new(PSK, NOW)
    first = answer_join(PSK, request.message, STATE, NOW)
    replay = answer_join(PSK, request.message, STATE, NOW + 30.0)  # replayed within the window
    assert request.open_response(first) == STATE
    # Only the original joiner could open either answer, and it has dropped
    # its key: the replay's answer is useless to everyone.
    assert_auth_error(lambda: request.open_response(replay))
    assert_auth_error(lambda: request.open_response(first))
    assert "used" in repr(request)
    # Replayed once the window is over, it is refused outright.
    assert_auth_error(lambda: answer_join(PSK, request.message, STATE, NOW + 61.0))


def test_a_response_answers_exactly_one_request() -> None:
    one, two = JoinRequest.new(PSK, NOW), JoinRequest.new(PSK, NOW)
    response = answer_join(PSK, one.message, STATE, NOW)
    assert_auth_error(lambda: two.open_response(response))
    assert one.open_response(response) == STATE


def test_messages_cannot_be_reflected() -> None:
    request = JoinRequest.new(PSK, NOW)
    response = answer_join(PSK, request.message, STATE, NOW)
    assert_auth_error(lambda: request.open_response(request.message))
    assert_auth_error(lambda: answer_join(PSK, response, STATE, NOW))
    # A request's tag under the response key's place: the direction keys differ.
    keys = psk_keys(PSK)
    assert keys[0] != keys[1]


def test_a_low_order_public_key_is_refused() -> None:
    """An all-zero X25519 point makes a shared secret of zeros; the peer must
    refuse even though the MAC is valid."""
    request = spec_request(PSK, NOW, bytes(32))
    assert_auth_error(lambda: answer_join(PSK, request, STATE, NOW))


# --------------------------------------------------------- what leaks where
def test_neither_message_carries_the_secret_or_the_psk() -> None:
    request = JoinRequest.new(PSK, NOW)
    response = answer_join(PSK, request.message, STATE, NOW)
    plain = pack_state(STATE.genesis, STATE.period, STATE.epoch, SECRET)
    for blob in (request.message, response):
        for value in (SECRET, PSK, *psk_keys(PSK)):
            for enc in (value, value.hex().encode(), base64.b64encode(value), value[:16]):
                assert enc not in blob
        assert plain not in blob
    assert request.open_response(response).secret == SECRET  # it is in there, encrypted


def test_a_recording_plus_the_psk_is_not_enough() -> None:
    """Forward secrecy: an attacker with the cluster secret and both recorded
    messages has everything but an ephemeral private key, and cannot decrypt.
    The same derivation with the joiner's ephemeral key succeeds, so the
    attacker's recipe is right and that key is the only missing piece."""
    request = JoinRequest.new(PSK, NOW)
    response = answer_join(PSK, request.message, STATE, NOW)
    recorded_request, recorded_response = request.message, response

    request_mac, response_mac, salt = psk_keys(PSK)
    # The attacker's psk-derived keys are the real ones: both MACs verify.
    assert hmac.compare_digest(recorded_request[58:], mac(request_mac, recorded_request[:58]))
    assert hmac.compare_digest(
        recorded_response[114:], mac(response_mac, recorded_request, recorded_response[:114])
    )
    header = recorded_response[:34]
    nonce, ciphertext = recorded_response[34:46], recorded_response[46:114]
    joiner_public = X25519PublicKey.from_public_bytes(recorded_request[26:58])
    peer_public = X25519PublicKey.from_public_bytes(header[2:])

    def try_open(shared: bytes) -> bytes | None:
        key = session_key(shared, PSK, recorded_request, header)
        try:
            return AESGCM(key).decrypt(nonce, ciphertext, recorded_request + header)
        except InvalidTag:
            return None

    attacker = X25519PrivateKey.generate()
    guesses = [
        attacker.exchange(joiner_public),
        attacker.exchange(peer_public),
        bytes(32),
        PSK[:32],
        salt,
        request_mac,
        response_mac,
        recorded_request[26:58],  # the public keys themselves
        header[2:],
    ]
    for shared in guesses:
        assert try_open(shared) is None
    for key in (salt, request_mac, response_mac, PSK[:32], hashlib.sha256(PSK).digest()):
        with pytest.raises(InvalidTag):
            AESGCM(key).decrypt(nonce, ciphertext, recorded_request + header)

    # With the joiner's ephemeral private key (white box) the recipe works.
    private = request._private
    assert private is not None
    plain = try_open(private.exchange(peer_public))
    assert plain == pack_state(STATE.genesis, STATE.period, STATE.epoch, SECRET)
    assert request.open_response(response) == STATE
    assert request._private is None  # and the joiner has let go of it


def test_repr_shows_no_key_material() -> None:
    request = JoinRequest.new(PSK, NOW)
    private = request._private
    assert private is not None
    raw = private.private_bytes_raw()
    texts = [repr(request), str(request), repr(request._keys), repr(STATE)]
    assert "JoinRequest(" in texts[0] and "open" in texts[0]
    for value in (raw, PSK, SECRET, *psk_keys(PSK)):
        for enc in (value.hex(), base64.b64encode(value).decode(), repr(value)):
            for text in texts:
                assert enc not in text


# ------------------------------------------------------- local mistakes
def test_a_short_psk_is_a_local_error() -> None:
    with pytest.raises(ValueError, match="at least 32 bytes"):
        JoinRequest.new(PSK[:31], NOW)
    request = JoinRequest.new(PSK, NOW)
    with pytest.raises(ValueError, match="at least 32 bytes"):
        answer_join(PSK[:31], request.message, STATE, NOW)
    JoinRequest.new(PSK[:32], NOW)  # 32 is enough


def test_bad_arguments_to_answer_join() -> None:
    request = JoinRequest.new(PSK, NOW)
    for skew in (0.0, -1.0, float("nan")):
        with pytest.raises(ValueError, match="max_skew"):
            answer_join(PSK, request.message, STATE, NOW, max_skew=skew)
    with pytest.raises(TypeError):
        answer_join(PSK, request.message, (1.0, 1.0, 1, SECRET), NOW)  # type: ignore[arg-type]
    for now in (-1.0, float("nan"), float("inf")):
        with pytest.raises(ValueError, match="time"):
            JoinRequest.new(PSK, now)


# ------------------------------------------------------ the cluster secret
def test_load_cluster_secret(tmp_path: Path) -> None:
    path = tmp_path / "cluster.key"
    path.write_bytes(PSK)
    path.chmod(0o400)
    assert load_cluster_secret(path) == PSK


def test_load_cluster_secret_refusals(tmp_path: Path) -> None:
    path = tmp_path / "cluster.key"
    with pytest.raises(ConfigError, match="does not exist") as err:
        load_cluster_secret(path)
    assert str(path) in str(err.value)

    path.write_bytes(PSK[:31])
    path.chmod(0o600)
    with pytest.raises(ConfigError, match="fewer than 32 bytes") as err:
        load_cluster_secret(path)
    assert str(path) in str(err.value) and PSK[:31].hex() not in str(err.value)

    path.write_bytes(PSK)
    path.chmod(0o644)  # a Kubernetes Secret volume's default mode
    with pytest.raises(ConfigError, match="group or others") as err:
        load_cluster_secret(path)
    for enc in (PSK.hex(), base64.b64encode(PSK).decode(), repr(PSK)):
        assert enc not in str(err.value)
