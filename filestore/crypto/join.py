"""Handing the ratchet state to a joining instance: message building and
checking only, no network.

Why this shape
--------------
A new gateway must receive the ratchet state (:class:`RatchetState`, whose
secret unlocks every live KEK) from a running one without a shared disk.
Both sides hold a *cluster secret* (the PSK: a random file of at least 32
bytes that only the instances can read, such as a Kubernetes Secret mounted
with mode 0400). The PSK authenticates both messages; an ephemeral X25519
exchange supplies the encryption key. Because both X25519 private keys exist
only in memory for the length of one hand-over, someone who later obtains the
PSK *and* a recording of the exchange still cannot decrypt the state: the
PSK alone never determines the key.

Keys derived from the PSK (HKDF-SHA256, no salt, info
``"filestore/v1/join-psk"``, 96 bytes, split in three)::

    request_mac_key ‖ response_mac_key ‖ kdf_salt

Separate MAC keys per direction mean a request can never pass as a response.

Messages (fixed sizes, integers big-endian)::

    request  (90 bytes)  = 0x01 version ‖ 0x01 kind ‖ timestamp_ms (8)
                           ‖ nonce (16) ‖ joiner_x25519_public (32)
                           ‖ HMAC-SHA256(request_mac_key, all of the above)

    response (146 bytes) = 0x01 version ‖ 0x02 kind ‖ peer_x25519_public (32)
                           ‖ aead_nonce (12) ‖ AES-256-GCM ciphertext (52 + 16)
                           ‖ HMAC-SHA256(response_mac_key, request ‖ all of the above)

The session key and the encryption::

    header     = version ‖ kind ‖ peer_x25519_public      (first 34 bytes)
    transcript = SHA-256("filestore/v1/join-transcript" ‖ request ‖ header)
    k          = HKDF-SHA256(X25519(shared), salt=kdf_salt,
                             info="filestore/v1/join" ‖ transcript)
    ciphertext = AES-256-GCM(k, aead_nonce, state, aad=request ‖ header)
    state      = genesis (float64) ‖ period (float64) ‖ epoch (uint32) ‖ secret (32)

``k`` mixes the PSK (through the salt) with the ephemeral secret, so an
attacker without the PSK cannot substitute a response of their own, and one
with the PSK but no ephemeral private key cannot read a recorded one. Binding
the whole request into the response MAC, the AAD and ``k`` means a response
answers exactly one request.

Freshness: the peer refuses a request whose timestamp is more than
``max_skew`` seconds from its own clock. A successful hand-over therefore
also shows that the two clocks agree to within about that much, which the
ratchet's epoch arithmetic relies on. A request replayed *inside* the window
gets an answer nobody but the original joiner can decrypt, so no replay cache
is needed; the window bounds how long a leaked joiner key would be useful.

Every failure on either side raises :class:`~filestore.errors.AuthError` with
one message, whatever the cause, so the error is no oracle.

Memory: the X25519 private keys are held by ``cryptography`` objects, which
cannot be wiped from Python; the joiner drops its key after a successful
:meth:`JoinRequest.open_response`. Best effort, as in
:mod:`filestore.crypto.ratchet`.
"""

from __future__ import annotations

import hashlib
import hmac
import math
import os
import struct
from pathlib import Path
from typing import Final

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey, X25519PublicKey
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from filestore.crypto._files import read_private_file
from filestore.crypto.ratchet import RatchetState
from filestore.errors import AuthError, ConfigError

__all__ = [
    "DEFAULT_MAX_SKEW",
    "MIN_PSK_SIZE",
    "REQUEST_SIZE",
    "RESPONSE_SIZE",
    "VERSION",
    "JoinRequest",
    "answer_join",
    "load_cluster_secret",
]

VERSION: Final = 1
KIND_REQUEST: Final = 1
KIND_RESPONSE: Final = 2
MIN_PSK_SIZE: Final = 32
DEFAULT_MAX_SKEW: Final = 60.0

PSK_INFO: Final = b"filestore/v1/join-psk"
TRANSCRIPT_LABEL: Final = b"filestore/v1/join-transcript"
SESSION_INFO: Final = b"filestore/v1/join"

NONCE_SIZE: Final = 16
PUBLIC_SIZE: Final = 32
MAC_SIZE: Final = 32
AEAD_NONCE_SIZE: Final = 12
_STATE: Final = struct.Struct(">ddI32s")  # genesis, period, epoch, secret
CIPHERTEXT_SIZE: Final = _STATE.size + 16
_REQUEST_HEAD: Final = struct.Struct(">BBQ")  # version, kind, timestamp_ms
REQUEST_SIZE: Final = _REQUEST_HEAD.size + NONCE_SIZE + PUBLIC_SIZE + MAC_SIZE
_RESPONSE_HEADER_SIZE: Final = 2 + PUBLIC_SIZE
RESPONSE_SIZE: Final = _RESPONSE_HEADER_SIZE + AEAD_NONCE_SIZE + CIPHERTEXT_SIZE + MAC_SIZE

_FAILED: Final = "the ratchet hand-over failed authentication"


def load_cluster_secret(path: Path) -> bytes:
    """The cluster secret (PSK) in the file at ``path``, as its raw bytes.

    ConfigError naming the path (never the contents) if the file is missing,
    accessible by group or others, or shorter than 32 bytes. The bytes are
    used as they are — no trailing newline is stripped — so every instance
    must read the same file content. The secret must be random (for instance
    ``head -c 32 /dev/urandom``): a request carries a MAC under it, so a
    guessable phrase could be found offline from one recorded request.
    """
    try:
        raw = read_private_file(path)
    except FileNotFoundError:
        raw = None
    if raw is None:
        raise ConfigError(f"cluster secret file {path} does not exist")
    if len(raw) < MIN_PSK_SIZE:
        raise ConfigError(f"cluster secret file {path} holds fewer than {MIN_PSK_SIZE} bytes")
    return raw


class _PskKeys:
    """The three keys derived from the PSK; see the module docstring."""

    __slots__ = ("kdf_salt", "request_mac", "response_mac")

    def __init__(self, psk: bytes) -> None:
        if not isinstance(psk, bytes | bytearray) or len(psk) < MIN_PSK_SIZE:
            raise ValueError(f"the cluster secret must be at least {MIN_PSK_SIZE} bytes")
        okm = HKDF(hashes.SHA256(), 3 * 32, salt=None, info=PSK_INFO).derive(psk)
        self.request_mac, self.response_mac, self.kdf_salt = okm[:32], okm[32:64], okm[64:]

    def __repr__(self) -> str:
        return "_PskKeys(<secret>)"


def _mac(key: bytes, *parts: bytes) -> bytes:
    h = hmac.new(key, digestmod=hashlib.sha256)
    for part in parts:
        h.update(part)
    return h.digest()


def _session_key(shared: bytes, keys: _PskKeys, request: bytes, header: bytes) -> bytes:
    transcript = hashlib.sha256(TRANSCRIPT_LABEL + request + header).digest()
    return HKDF(hashes.SHA256(), 32, salt=keys.kdf_salt, info=SESSION_INFO + transcript).derive(
        shared
    )


def _exchange(private: X25519PrivateKey, public: bytes) -> bytes | None:
    """The X25519 shared secret, or None for a public key that gives none
    (a low-order point yields all zeros, which ``cryptography`` refuses)."""
    try:
        return private.exchange(X25519PublicKey.from_public_bytes(public))
    except ValueError:
        return None


def _timestamp_ms(now: float) -> int:
    if not math.isfinite(now) or not 0 <= now < 2**63 / 1000:
        raise ValueError("the time must be finite and non-negative")
    return round(now * 1000)


def _public_bytes(private: X25519PrivateKey) -> bytes:
    return private.public_key().public_bytes_raw()


# --------------------------------------------------------------------- joiner
class JoinRequest:
    """The joiner's half of one hand-over: the request to send and the
    ephemeral private key that alone can open the answer.

    ``JoinRequest.new(psk, now).message`` (or ``bytes(request)``) goes to a
    peer; the peer's answer goes to :meth:`open_response`. One object serves
    one successful hand-over; make a new one to retry after a failure on the
    network or at the peer.
    """

    __slots__ = ("_keys", "_message", "_private", "created_at")

    def __init__(
        self, keys: _PskKeys, private: X25519PrivateKey, message: bytes, created_at: float
    ) -> None:
        """Use :meth:`new`."""
        self._keys = keys
        self._private: X25519PrivateKey | None = private
        self._message = message
        self.created_at = created_at

    @classmethod
    def new(cls, psk: bytes, now: float) -> JoinRequest:
        """A request timestamped ``now`` with a fresh ephemeral key and nonce.
        ValueError if ``psk`` is shorter than 32 bytes or ``now`` is not a
        plausible time."""
        keys = _PskKeys(psk)
        private = X25519PrivateKey.generate()
        body = (
            _REQUEST_HEAD.pack(VERSION, KIND_REQUEST, _timestamp_ms(now))
            + os.urandom(NONCE_SIZE)
            + _public_bytes(private)
        )
        return cls(keys, private, body + _mac(keys.request_mac, body), float(now))

    @property
    def message(self) -> bytes:
        """The request bytes to send; they hold no secret."""
        return self._message

    def __bytes__(self) -> bytes:
        return self._message

    def __repr__(self) -> str:
        state = "open" if self._private is not None else "used"
        return f"JoinRequest(created_at={self.created_at}, {state})"

    def open_response(self, response: bytes) -> RatchetState:
        """The ratchet state in the peer's ``response`` to this request.

        AuthError for anything but an untampered response, made with the
        same PSK, to exactly this request — or when this request has already
        been answered (its private key is dropped on success).
        """
        state = self._open(response)
        if state is None:
            raise AuthError(_FAILED)
        self._private = None
        return state

    def _open(self, response: bytes) -> RatchetState | None:
        if self._private is None or not isinstance(response, bytes):
            return None
        if len(response) != RESPONSE_SIZE:
            return None
        body, tag = response[:-MAC_SIZE], response[-MAC_SIZE:]
        if not hmac.compare_digest(tag, _mac(self._keys.response_mac, self._message, body)):
            return None
        if body[0] != VERSION or body[1] != KIND_RESPONSE:
            return None
        header = body[:_RESPONSE_HEADER_SIZE]
        peer_public = header[2:]
        nonce = body[_RESPONSE_HEADER_SIZE : _RESPONSE_HEADER_SIZE + AEAD_NONCE_SIZE]
        ciphertext = body[_RESPONSE_HEADER_SIZE + AEAD_NONCE_SIZE :]
        shared = _exchange(self._private, peer_public)
        if shared is None:
            return None
        key = _session_key(shared, self._keys, self._message, header)
        try:
            plain = AESGCM(key).decrypt(nonce, ciphertext, self._message + header)
        except InvalidTag:
            return None
        genesis, period, epoch, secret = _STATE.unpack(plain)
        try:
            return RatchetState(genesis, period, epoch, secret)
        except ValueError:
            return None


# ----------------------------------------------------------------------- peer
def answer_join(
    psk: bytes,
    request: bytes,
    state: RatchetState,
    now: float,
    max_skew: float = DEFAULT_MAX_SKEW,
) -> bytes:
    """The response handing ``state`` to the joiner that sent ``request``.

    ``state`` is the answering instance's
    :meth:`~filestore.crypto.ratchet.RatchetKeyring.export_state`, taken
    after an :meth:`~filestore.crypto.ratchet.RatchetKeyring.advance`.
    AuthError (one message for every cause) unless ``request`` is an
    untampered version-1 request under the same PSK whose timestamp lies
    within ``max_skew`` seconds of ``now``. ValueError for a short PSK or a
    non-positive ``max_skew`` (local mistakes, not the joiner's).
    """
    keys = _PskKeys(psk)
    if not isinstance(state, RatchetState):
        raise TypeError("answer_join needs a RatchetState")
    if not math.isfinite(max_skew) or max_skew <= 0:
        raise ValueError("max_skew must be a positive number of seconds")
    joiner_public = _check_request(keys, request, now, max_skew)
    if joiner_public is None:
        raise AuthError(_FAILED)
    private = X25519PrivateKey.generate()
    shared = _exchange(private, joiner_public)
    if shared is None:
        raise AuthError(_FAILED)
    header = bytes([VERSION, KIND_RESPONSE]) + _public_bytes(private)
    key = _session_key(shared, keys, request, header)
    nonce = os.urandom(AEAD_NONCE_SIZE)
    plain = _STATE.pack(state.genesis, state.period, state.epoch, state.secret)
    body = header + nonce + AESGCM(key).encrypt(nonce, plain, request + header)
    return body + _mac(keys.response_mac, request, body)


def _check_request(keys: _PskKeys, request: bytes, now: float, max_skew: float) -> bytes | None:
    """The joiner's X25519 public key if ``request`` passes every check."""
    if not isinstance(request, bytes) or len(request) != REQUEST_SIZE:
        return None
    body, tag = request[:-MAC_SIZE], request[-MAC_SIZE:]
    if not hmac.compare_digest(tag, _mac(keys.request_mac, body)):
        return None
    version, kind, stamp_ms = _REQUEST_HEAD.unpack_from(body)
    if version != VERSION or kind != KIND_REQUEST:
        return None
    if not math.isfinite(now) or abs(now - stamp_ms / 1000) > max_skew:
        return None
    return body[_REQUEST_HEAD.size + NONCE_SIZE :]
