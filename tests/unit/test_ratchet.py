"""The forward-secure key schedule (filestore.crypto.ratchet).

Instances live in separate temporary directories (machines that share no
disk); a second instance gets its state only through the join hand-over.
Time comes from a ManualClock, never from sleeping. The chain is recomputed
here from the documented formulas, so the tests also pin the derivation.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import math
import os
import shutil
import stat
import threading
from pathlib import Path

import pytest
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.hkdf import HKDF
from hypothesis import example, given
from hypothesis import strategies as st

from filestore.clock import ManualClock
from filestore.crypto.join import JoinRequest, answer_join
from filestore.crypto.ratchet import RatchetKeyring, RatchetState
from filestore.crypto.wrapping import DekBinding
from filestore.errors import ConfigError, IntegrityError, KeyNotFound

PERIOD = 3600.0
GENESIS = 1_800_000_000.0  # a multiple of PERIOD
NOW = GENESIS + 123.0
DESTROY_AFTER = 86_400.0 - 120.0 + 60.0 + 600.0  # max_ttl + purge_interval + grace
PSK = bytes(range(32, 80))
FILE = DekBinding(bytes(range(16)), "acme")
OTHER_FILE = DekBinding(bytes(range(1, 17)), "acme")
MAX_ID = 0xFFFFFFFF


# ------------------------------------------------------- the documented chain
def spec_hkdf(secret: bytes, info: bytes) -> bytes:
    return HKDF(hashes.SHA256(), 32, salt=None, info=info).derive(secret)


def spec_chain(secret_1: bytes, upto: int, first: int = 1) -> dict[int, tuple[bytes, bytes]]:
    """Epoch -> (secret, KEK) from ``first`` to ``upto``, by the docstring."""
    out: dict[int, tuple[bytes, bytes]] = {}
    secret = secret_1
    for e in range(first, upto + 1):
        kek = spec_hkdf(secret, b"filestore/v1/ratchet-kek" + e.to_bytes(4, "big"))
        out[e] = (secret, kek)
        secret = spec_hkdf(secret, b"filestore/v1/ratchet-next" + e.to_bytes(4, "big"))
    return out


def encodings(raw: bytes) -> list[bytes]:
    """Ways a key could show up in a file or a message."""
    return [raw, raw.hex().encode(), base64.b64encode(raw), repr(raw).encode()]


def file_secret(path: Path) -> bytes:
    return base64.b64decode(json.loads(path.read_text())["secret"])


def mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def at_epoch(e: int, offset: float = 1.0) -> float:
    """A time inside epoch ``e``."""
    return GENESIS + (e - 1) * PERIOD + offset


def deadline(e: int) -> float:
    return GENESIS + e * PERIOD + DESTROY_AFTER


def dek(n: int) -> bytes:
    return hashlib.sha256(b"dek %d" % n).digest()


def join(peer: RatchetKeyring, path: Path, now: float) -> RatchetKeyring:
    """A new instance at ``path`` that gets its state from ``peer`` through
    the hand-over (the only link between the two directories)."""
    request = JoinRequest.new(PSK, now)
    response = answer_join(PSK, request.message, peer.export_state(), now)
    return RatchetKeyring.from_state(path, request.open_response(response))


@pytest.fixture
def clock() -> ManualClock:
    return ManualClock(NOW)


@pytest.fixture
def host_a(tmp_path: Path) -> Path:
    return tmp_path / "host-a" / "keys" / "ratchet.json"


@pytest.fixture
def host_b(tmp_path: Path) -> Path:
    return tmp_path / "host-b" / "keys" / "ratchet.json"


@pytest.fixture
def a(host_a: Path) -> RatchetKeyring:
    return RatchetKeyring.create(host_a, NOW, PERIOD, genesis=GENESIS)


@pytest.fixture
def b(a: RatchetKeyring, host_b: Path) -> RatchetKeyring:
    return join(a, host_b, NOW)


# ------------------------------------------------------------------ creation
def test_create_writes_a_private_file_with_the_documented_fields(
    a: RatchetKeyring, host_a: Path
) -> None:
    assert mode(host_a) == 0o600
    assert mode(host_a.parent) == 0o700
    assert mode(host_a.parent.parent) == 0o700
    doc = json.loads(host_a.read_text())
    assert doc["format"] == "filestore-ratchet/1"
    assert doc["genesis"] == GENESIS
    assert doc["period"] == PERIOD
    assert doc["epoch"] == 1
    assert len(base64.b64decode(doc["secret"], validate=True)) == 32
    assert "back up" in doc["warning"]
    assert sorted(p.name for p in host_a.parent.iterdir()) == ["ratchet.json"]  # no temp files
    assert (a.genesis, a.period, a.oldest_epoch, a.path) == (GENESIS, PERIOD, 1, host_a)
    assert a.current_epoch(NOW) == 1


def test_by_default_epoch_ids_are_absolute(tmp_path: Path) -> None:
    """Genesis at Unix time 0: the first epoch is the one covering now, its
    id far above any id a keyring hands out, and earlier ids never exist."""
    path = tmp_path / "r.json"
    ring = RatchetKeyring.create(path, NOW, PERIOD)
    first = math.floor(NOW / PERIOD) + 1
    assert first == 500_001
    doc = json.loads(path.read_text())
    assert (doc["genesis"], doc["period"], doc["epoch"]) == (0.0, PERIOD, first)
    assert (ring.genesis, ring.oldest_epoch, ring.current_epoch(NOW)) == (0.0, first, first)
    assert ring.start_of(first) <= NOW < ring.end_of(first)
    kek_id, wrapped = ring.wrap(dek(1), FILE, NOW)
    assert kek_id == first
    assert ring.unwrap(kek_id, FILE, wrapped, NOW) == dek(1)
    for earlier in (1, 2, first - 1):
        with pytest.raises(KeyNotFound, match="predates"):
            ring.unwrap(earlier, FILE, wrapped, NOW)
    # The next epoch starts on the next multiple of the period.
    assert ring.current_epoch(first * PERIOD) == first + 1
    assert ring.wrap(dek(1), FILE, first * PERIOD)[0] == first + 1


def test_an_explicit_genesis_numbers_from_one(tmp_path: Path) -> None:
    ring = RatchetKeyring.create(tmp_path / "r.json", NOW, PERIOD, genesis=NOW - 10.0)
    assert (ring.genesis, ring.oldest_epoch, ring.current_epoch(NOW)) == (NOW - 10.0, 1, 1)
    ring = RatchetKeyring.create(tmp_path / "s.json", NOW, PERIOD, genesis=NOW - 2.5 * PERIOD)
    assert (ring.oldest_epoch, ring.current_epoch(NOW)) == (3, 3)
    for bad in (NOW + 1.0, -1.0, math.nan):
        with pytest.raises(ValueError, match="genesis"):
            RatchetKeyring.create(tmp_path / "t.json", NOW, PERIOD, genesis=bad)
    assert not (tmp_path / "t.json").exists()


def test_two_creations_draw_different_secrets(tmp_path: Path) -> None:
    one = RatchetKeyring.create(tmp_path / "1.json", NOW, PERIOD)
    two = RatchetKeyring.create(tmp_path / "2.json", NOW, PERIOD)
    assert one.export_state().secret != two.export_state().secret
    assert file_secret(tmp_path / "1.json") != file_secret(tmp_path / "2.json")


def test_create_refuses_to_overwrite(a: RatchetKeyring, host_a: Path) -> None:
    before = host_a.read_bytes()
    with pytest.raises(FileExistsError):
        RatchetKeyring.create(host_a, NOW, PERIOD)
    assert host_a.read_bytes() == before


@pytest.mark.parametrize("period", [0.0, -3600.0, 0.5, math.nan, math.inf])
def test_create_rejects_a_bad_period(tmp_path: Path, period: float) -> None:
    with pytest.raises(ValueError, match="period"):
        RatchetKeyring.create(tmp_path / "r.json", NOW, period)
    assert not (tmp_path / "r.json").exists()


@pytest.mark.parametrize("now", [-1.0, math.nan, math.inf])
def test_create_rejects_a_bad_time(tmp_path: Path, now: float) -> None:
    with pytest.raises(ValueError, match="time"):
        RatchetKeyring.create(tmp_path / "r.json", now, PERIOD)


def test_load_gives_the_same_ratchet(a: RatchetKeyring, host_a: Path) -> None:
    loaded = RatchetKeyring.load(host_a)
    assert (loaded.genesis, loaded.period, loaded.oldest_epoch) == (GENESIS, PERIOD, 1)
    kek_id, wrapped = a.wrap(dek(1), FILE, NOW)
    assert loaded.unwrap(kek_id, FILE, wrapped, NOW) == dek(1)
    assert loaded.commitment(1, NOW) == a.commitment(1, NOW)


def test_load_of_a_missing_file(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError):
        RatchetKeyring.load(tmp_path / "absent.json")


# ------------------------------------------------------------ epoch arithmetic
def test_epochs_follow_the_clock(a: RatchetKeyring) -> None:
    assert a.current_epoch(GENESIS) == 1
    assert a.current_epoch(GENESIS + PERIOD - 0.001) == 1
    assert a.current_epoch(GENESIS + PERIOD) == 2
    assert a.current_epoch(GENESIS + 10 * PERIOD + 5) == 11
    assert a.current_epoch(GENESIS - 30.0) == 1  # a clock slightly behind the creator
    assert (a.start_of(3), a.end_of(3)) == (GENESIS + 2 * PERIOD, GENESIS + 3 * PERIOD)
    assert a.deadline(3, DESTROY_AFTER) == GENESIS + 3 * PERIOD + DESTROY_AFTER
    state = a.export_state()
    assert state.current_epoch(GENESIS + 10 * PERIOD + 5) == 11
    assert state.end_of(3) == a.end_of(3)


def test_time_may_be_a_clock_or_a_number(a: RatchetKeyring, clock: ManualClock) -> None:
    clock.set(at_epoch(4))
    assert a.current_epoch(clock) == a.current_epoch(clock.now()) == 4
    kek_id, wrapped = a.wrap(dek(1), FILE, clock)
    assert kek_id == 4
    assert a.unwrap(kek_id, FILE, wrapped, clock.now()) == dek(1)


# -------------------------------------------------------- matches the formulas
def test_keks_and_commitments_follow_the_documented_chain(a: RatchetKeyring, host_a: Path) -> None:
    chain = spec_chain(file_secret(host_a), 6)
    for e in range(1, 7):
        kek_id, wrapped = a.wrap(dek(e), FILE, at_epoch(e))
        assert kek_id == e
        assert len(wrapped) == 1 + 12 + 32 + 16 and wrapped[0] == 2
        kek = chain[e][1]
        plain = AESGCM(kek).decrypt(wrapped[1:13], wrapped[13:], FILE.aad(e))
        assert plain == dek(e)
        expected = hmac.new(kek, b"filestore/v1/ratchet-commitment", hashlib.sha256).digest()
        assert a.commitment(e, at_epoch(e)) == expected
    assert len({chain[e][1] for e in chain}) == 6  # every epoch its own KEK


def test_a_dek_wrapped_with_the_documented_kek_unwraps(a: RatchetKeyring, host_a: Path) -> None:
    kek = spec_chain(file_secret(host_a), 3)[3][1]
    nonce = os.urandom(12)
    wrapped = b"\x02" + nonce + AESGCM(kek).encrypt(nonce, dek(7), FILE.aad(3))
    assert a.unwrap(3, FILE, wrapped, at_epoch(3)) == dek(7)


# ---------------------------------------------------------------- wrap/unwrap
def test_wrap_unwrap_and_tampering(a: RatchetKeyring) -> None:
    kek_id, wrapped = a.wrap(dek(1), FILE, NOW)
    assert a.unwrap(kek_id, FILE, wrapped, NOW) == dek(1)
    assert a.wrap(dek(1), FILE, NOW)[1] != wrapped  # fresh nonce each time
    for i in range(len(wrapped)):
        bad = bytearray(wrapped)
        bad[i] ^= 0x01
        with pytest.raises(IntegrityError):
            a.unwrap(kek_id, FILE, bytes(bad), NOW)
    with pytest.raises(IntegrityError):
        a.unwrap(kek_id, OTHER_FILE, wrapped, NOW)
    with pytest.raises(IntegrityError):
        a.unwrap(kek_id + 1, FILE, wrapped, NOW)  # relabelled to the next epoch
    with pytest.raises(IntegrityError):
        a.unwrap(kek_id, FILE, wrapped[:-1], NOW)
    with pytest.raises(IntegrityError):
        a.unwrap(kek_id, FILE, wrapped + b"\x00", NOW)


def test_wrap_rejects_a_dek_of_the_wrong_size(a: RatchetKeyring) -> None:
    for size in (0, 16, 31, 33):
        with pytest.raises(ValueError, match="32 bytes"):
            a.wrap(bytes(size), FILE, NOW)


def test_unwrap_allows_one_epoch_of_skew_and_refuses_the_future(
    a: RatchetKeyring, b: RatchetKeyring
) -> None:
    # b's clock is already in epoch 2 while a's is still late in epoch 1.
    late_in_1 = GENESIS + PERIOD - 1.0
    kek_id, wrapped = b.wrap(dek(1), FILE, GENESIS + PERIOD + 1.0)
    assert kek_id == 2
    assert a.unwrap(kek_id, FILE, wrapped, late_in_1) == dek(1)
    # Two epochs ahead is refused, although the key could be derived.
    kek_id, wrapped = b.wrap(dek(2), FILE, at_epoch(3))
    assert kek_id == 3
    with pytest.raises(KeyNotFound, match="future"):
        a.unwrap(kek_id, FILE, wrapped, late_in_1)
    assert a.unwrap(kek_id, FILE, wrapped, at_epoch(2)) == dek(2)
    with pytest.raises(KeyNotFound, match="future"):
        a.commitment(5, at_epoch(3))
    assert a.commitment(4, at_epoch(3)) == b.commitment(4, at_epoch(4))


def test_a_far_future_or_invalid_id_is_refused_at_once(a: RatchetKeyring) -> None:
    _, wrapped = a.wrap(dek(1), FILE, NOW)
    for kek_id in (MAX_ID, MAX_ID + 1, 2**40):
        with pytest.raises(KeyNotFound):
            a.unwrap(kek_id, FILE, wrapped, NOW)
    for kek_id in (0, -1):
        with pytest.raises(KeyNotFound):
            a.unwrap(kek_id, FILE, wrapped, NOW)
    with pytest.raises(KeyNotFound):
        a.commitment(0, NOW)
    # Nothing was derived for those ids: only epoch 1 (and nothing else) is held.
    assert sorted(a._chain) == [1]


def test_wrap_with_a_clock_in_a_destroyed_epoch_is_refused(a: RatchetKeyring) -> None:
    a.advance(deadline(3), DESTROY_AFTER)
    assert a.oldest_epoch == 4
    with pytest.raises(KeyNotFound, match="destroyed"):
        a.wrap(dek(1), FILE, at_epoch(2))


# ------------------------------------------------- two machines, one ratchet
def test_two_instances_without_shared_disk_unwrap_each_others_keys(
    a: RatchetKeyring, b: RatchetKeyring, host_a: Path, host_b: Path, clock: ManualClock
) -> None:
    assert host_a.parent != host_b.parent
    assert not set(host_a.parent.iterdir()) & set(host_b.parent.iterdir())
    assert mode(host_b) == 0o600
    assert json.loads(host_b.read_text()) == json.loads(host_a.read_text())

    wrapped: list[tuple[int, DekBinding, bytes, bytes]] = []  # (kek_id, file_id, wrapped, dek)
    for step in range(8):
        now = clock.now()
        assert a.current_epoch(clock) == b.current_epoch(clock) == step + 1
        writer, other = (a, b) if step % 2 == 0 else (b, a)
        file_id = DekBinding(bytes([step]) * 16, "acme")
        kek_id, w = writer.wrap(dek(step), file_id, clock)
        assert kek_id == step + 1
        wrapped.append((kek_id, file_id, w, dek(step)))
        # The other instance unwraps it, and everything wrapped before.
        for kid, fid, blob, key in wrapped:
            assert other.unwrap(kid, fid, blob, now) == key
            assert writer.unwrap(kid, fid, blob, now) == key
        assert a.commitment(kek_id, now) == b.commitment(kek_id, now)
        clock.advance(PERIOD)


def test_independently_created_ratchets_are_told_apart(tmp_path: Path) -> None:
    """Split brain: same schedule, different secrets."""
    one = RatchetKeyring.create(tmp_path / "one" / "r.json", NOW, PERIOD)
    two = RatchetKeyring.create(tmp_path / "two" / "r.json", NOW + 5.0, PERIOD)
    e = one.current_epoch(NOW)
    assert two.current_epoch(NOW) == e
    assert one.commitment(e, NOW) != two.commitment(e, NOW)
    kek_id, wrapped = one.wrap(dek(1), FILE, NOW)
    assert kek_id == e
    with pytest.raises(IntegrityError):
        two.unwrap(kek_id, FILE, wrapped, NOW)


# ------------------------------------------------------------- destruction
def test_advance_destroys_an_epoch_everywhere_after_its_deadline(
    a: RatchetKeyring, b: RatchetKeyring, host_a: Path, host_b: Path
) -> None:
    chain = spec_chain(file_secret(host_a), 6)
    wrapped = {e: (a if e % 2 else b).wrap(dek(e), FILE, at_epoch(e)) for e in range(1, 6)}
    assert [w[0] for w in wrapped.values()] == [1, 2, 3, 4, 5]

    # One second before epoch 1's deadline nothing goes.
    for ring in (a, b):
        assert ring.due(deadline(1) - 1.0, DESTROY_AFTER) == []
        assert ring.advance(deadline(1) - 1.0, DESTROY_AFTER) == []
        assert ring.unwrap(1, FILE, wrapped[1][1], deadline(1) - 1.0) == dek(1)

    for ring, path in ((a, host_a), (b, host_b)):
        assert ring.due(deadline(1), DESTROY_AFTER) == [1]
        assert ring.advance(deadline(1), DESTROY_AFTER) == [1]
        assert ring.oldest_epoch == 2
        assert json.loads(path.read_text())["epoch"] == 2
        assert file_secret(path) == chain[2][0]
    for ring in (a, b):
        with pytest.raises(KeyNotFound, match="destroyed"):
            ring.unwrap(1, FILE, wrapped[1][1], deadline(1))
        with pytest.raises(KeyNotFound):
            ring.commitment(1, deadline(1))
        for e in range(2, 6):
            assert ring.unwrap(e, FILE, wrapped[e][1], deadline(1)) == dek(e)

    # Later, two epochs at once.
    for ring, path in ((a, host_a), (b, host_b)):
        assert ring.advance(deadline(3) + 10.0, DESTROY_AFTER) == [2, 3]
        assert file_secret(path) == chain[4][0]
        for e in (1, 2, 3):
            with pytest.raises(KeyNotFound):
                ring.unwrap(e, FILE, wrapped[e][1], deadline(3) + 10.0)
        for e in (4, 5):
            assert ring.unwrap(e, FILE, wrapped[e][1], deadline(3) + 10.0) == dek(e)

    # Nothing on either disk from which KEK_1..KEK_3 follow.
    for path in (host_a, host_b):
        stored = file_secret(path)
        raw = path.read_bytes()
        for e in (1, 2, 3):
            secret, kek = chain[e]
            assert stored != secret
            for text in encodings(secret) + encodings(kek):
                assert text not in raw
        # …while the epochs still alive are exactly those the file yields.
        assert spec_chain(stored, 5, first=4)[5] == chain[5]


def test_advance_is_idempotent(a: RatchetKeyring, host_a: Path) -> None:
    assert a.advance(deadline(2), DESTROY_AFTER) == [1, 2]
    before = host_a.stat()
    content = host_a.read_bytes()
    assert a.advance(deadline(2), DESTROY_AFTER) == []
    assert a.advance(deadline(2) + 1.0, DESTROY_AFTER) == []
    after = host_a.stat()
    assert host_a.read_bytes() == content
    assert (after.st_ino, after.st_mtime_ns) == (before.st_ino, before.st_mtime_ns)  # not rewritten


def test_advance_never_destroys_the_current_epoch(a: RatchetKeyring) -> None:
    now = at_epoch(5, offset=0.0)  # the first instant of epoch 5
    assert a.advance(now, 0.0) == [1, 2, 3, 4]
    assert a.advance(now + PERIOD - 1.0, 0.0) == []
    kek_id, wrapped = a.wrap(dek(1), FILE, now)
    assert (kek_id, a.oldest_epoch) == (5, 5)
    assert a.unwrap(kek_id, FILE, wrapped, now) == dek(1)


def test_the_current_epoch_survives_float_rounding_at_its_own_end(tmp_path: Path) -> None:
    """With these values ``end_of(e)`` rounds so that the clock, read at that
    instant, still says ``e`` while ``deadline(e, 0) <= now``: only the
    never-the-current-epoch rule keeps ``e`` alive."""
    e = 878_265
    ring = RatchetKeyring.from_state(
        tmp_path / "r.json", RatchetState(1_634_122_829.0, 1.1, e - 3, SECRET)
    )
    now = ring.end_of(e)
    assert ring.current_epoch(now) == e and ring.deadline(e, 0.0) <= now  # the edge case
    assert ring.due(now, 0.0) == [e - 3, e - 2, e - 1]
    assert ring.advance(now, 0.0) == [e - 3, e - 2, e - 1]
    kek_id, wrapped = ring.wrap(dek(1), FILE, now)
    assert kek_id == e
    assert ring.unwrap(kek_id, FILE, wrapped, now) == dek(1)


def test_an_epoch_is_due_exactly_at_its_deadline_despite_rounding(tmp_path: Path) -> None:
    """Here dividing by the period lands one epoch short; the rule is
    ``deadline(e) <= now`` and nothing else."""
    e, destroy_after = 579_716, 86_400.0
    ring = RatchetKeyring.from_state(
        tmp_path / "r.json", RatchetState(1_372_967_708.3581595, 1.1, e - 2, SECRET)
    )
    now = ring.deadline(e, destroy_after)
    assert math.floor((now - destroy_after - ring.genesis) / ring.period) == e - 1  # the edge
    assert ring.due(now, destroy_after) == [e - 2, e - 1, e]
    assert ring.due(math.nextafter(now, 0.0), destroy_after) == [e - 2, e - 1]
    assert ring.advance(now, destroy_after) == [e - 2, e - 1, e]
    assert ring.oldest_epoch == e + 1


def test_an_epoch_is_not_due_a_moment_before_its_deadline_despite_rounding(
    tmp_path: Path,
) -> None:
    """Here dividing by the period lands one epoch too far a moment before
    the deadline."""
    e, destroy_after = 199_430, 86_400.0
    ring = RatchetKeyring.from_state(
        tmp_path / "r.json", RatchetState(129_004_991.97063908, 1985.4, e - 1, SECRET)
    )
    now = math.nextafter(ring.deadline(e, destroy_after), 0.0)
    assert math.floor((now - destroy_after - ring.genesis) / ring.period) == e  # the edge
    assert ring.due(now, destroy_after) == [e - 1]
    assert ring.advance(now, destroy_after) == [e - 1]
    assert ring.due(ring.deadline(e, destroy_after), destroy_after) == [e]


@given(
    genesis=st.floats(0.0, 2e9),
    period=st.floats(1.0, 1e5),
    center=st.integers(1, 10**6),
    destroy_after=st.floats(0.0, 2e5),
    jitter=st.floats(-3.0, 3.0),
)
@example(genesis=1_634_122_829.0, period=1.1, center=878_265, destroy_after=0.0, jitter=0.0)
@example(
    genesis=1_372_967_708.3581595, period=1.1, center=579_716, destroy_after=86_400.0, jitter=0.0
)
def test_due_is_exactly_the_rule(
    genesis: float, period: float, center: int, destroy_after: float, jitter: float
) -> None:
    """Due: every held epoch with ``deadline(e) <= now`` except the current
    one and later. (The constructor touches no disk; ``due`` derives nothing.)"""
    base = max(1, center - 5)
    ring = RatchetKeyring(Path("/nonexistent/r.json"), RatchetState(genesis, period, base, SECRET))
    now = genesis + center * period + destroy_after + jitter * period
    current = ring.current_epoch(now)
    expected = [
        e
        for e in range(base, center + 10)
        if ring.deadline(e, destroy_after) <= now and e < current
    ]
    assert ring.due(now, destroy_after) == expected


def test_advance_rejects_a_bad_destroy_after(a: RatchetKeyring) -> None:
    for bad in (-1.0, math.nan, math.inf):
        with pytest.raises(ValueError, match="destroy_after"):
            a.advance(deadline(1), bad)
    assert a.oldest_epoch == 1


def test_keep_from_holds_an_epoch_and_everything_after_it(a: RatchetKeyring) -> None:
    _, w2 = a.wrap(dek(2), FILE, at_epoch(2))
    assert a.due(deadline(4), DESTROY_AFTER) == [1, 2, 3, 4]
    assert a.advance(deadline(4), DESTROY_AFTER, keep_from=2) == [1]
    assert a.unwrap(2, FILE, w2, deadline(4)) == dek(2)
    assert a.due(deadline(4), DESTROY_AFTER) == [2, 3, 4]
    assert a.advance(deadline(4), DESTROY_AFTER) == [2, 3, 4]
    with pytest.raises(KeyNotFound):
        a.unwrap(2, FILE, w2, deadline(4))


def test_due_destroys_nothing(a: RatchetKeyring, host_a: Path) -> None:
    content = host_a.read_bytes()
    _, w1 = a.wrap(dek(1), FILE, NOW)
    assert a.due(deadline(2), DESTROY_AFTER) == [1, 2]
    assert host_a.read_bytes() == content
    assert a.unwrap(1, FILE, w1, deadline(2)) == dek(1)


def test_destruction_survives_a_restart(a: RatchetKeyring, host_a: Path) -> None:
    wrapped = {e: a.wrap(dek(e), FILE, at_epoch(e))[1] for e in (1, 2, 3)}
    a.advance(deadline(1), DESTROY_AFTER)
    restarted = RatchetKeyring.load(host_a)
    assert restarted.oldest_epoch == 2
    with pytest.raises(KeyNotFound):
        restarted.unwrap(1, FILE, wrapped[1], deadline(1))
    assert restarted.unwrap(3, FILE, wrapped[3], deadline(1)) == dek(3)


def test_destroyed_buffers_are_zeroed(a: RatchetKeyring) -> None:
    """Best effort (see the module docstring), but the buffers we own go."""
    _, w1 = a.wrap(dek(1), FILE, NOW)
    a.wrap(dek(1), FILE, at_epoch(3))  # derives epochs 1..3, uses 1 and 3
    objects = {e: a._chain[e] for e in (1, 2, 3)}
    held = {e: (objects[e].secret, objects[e].kek) for e in (1, 2, 3)}
    assert all(any(buf) for pair in held.values() for buf in pair)
    # An AES-GCM context (another copy of the key) only for epochs in use.
    assert [objects[e]._aead is not None for e in (1, 2, 3)] == [True, False, True]
    a.advance(deadline(2), DESTROY_AFTER)
    for e in (1, 2):
        secret, kek = held[e]
        assert secret == bytearray(32) and kek == bytearray(32)
        assert objects[e]._aead is None
    assert any(held[3][0]) and any(held[3][1]) and objects[3]._aead is not None
    assert sorted(a._chain) == [3]
    with pytest.raises(KeyNotFound):
        a.unwrap(1, FILE, w1, deadline(2))


# ------------------------------------------------- backups and late joiners
def test_only_a_copy_from_before_destruction_revives_an_epoch(
    a: RatchetKeyring, host_a: Path, tmp_path: Path
) -> None:
    """Why the ratchet file must never be backed up."""
    _, w1 = a.wrap(dek(1), FILE, NOW)
    backup = tmp_path / "backup" / "ratchet.json"
    backup.parent.mkdir(mode=0o700)
    shutil.copy2(host_a, backup)
    a.advance(deadline(1), DESTROY_AFTER)
    with pytest.raises(KeyNotFound):
        a.unwrap(1, FILE, w1, deadline(1))
    # The copy alone is enough to read epoch 1 again…
    revived = RatchetKeyring.load(backup)
    assert revived.unwrap(1, FILE, w1, deadline(1)) == dek(1)
    # …and loading it then advancing destroys it again.
    assert revived.advance(deadline(1), DESTROY_AFTER) == [1]
    with pytest.raises(KeyNotFound):
        revived.unwrap(1, FILE, w1, deadline(1))


def test_a_restored_file_is_pushed_forward_by_a_running_process(
    a: RatchetKeyring, host_a: Path, tmp_path: Path
) -> None:
    backup = tmp_path / "old-copy.json"
    shutil.copy2(host_a, backup)
    old_secret = file_secret(host_a)
    a.advance(deadline(2), DESTROY_AFTER)
    shutil.copy2(backup, host_a)  # an operator restores the copy
    assert file_secret(host_a) == old_secret
    assert a.advance(deadline(2), DESTROY_AFTER) == []  # nothing new for this process…
    assert json.loads(host_a.read_text())["epoch"] == 3  # …but the file moved on again
    assert file_secret(host_a) != old_secret


def test_a_joiner_after_destruction_gets_no_destroyed_epoch(
    a: RatchetKeyring, host_a: Path, tmp_path: Path
) -> None:
    chain = spec_chain(file_secret(host_a), 4)
    wrapped = {e: a.wrap(dek(e), FILE, at_epoch(e))[1] for e in (1, 2, 3, 4)}
    now = deadline(2)
    a.advance(now, DESTROY_AFTER)
    late = join(a, tmp_path / "host-c" / "ratchet.json", now)
    assert late.oldest_epoch == 3
    for e in (1, 2):
        with pytest.raises(KeyNotFound):
            late.unwrap(e, FILE, wrapped[e], now)
    for e in (3, 4):
        assert late.unwrap(e, FILE, wrapped[e], now) == dek(e)
    raw = (tmp_path / "host-c" / "ratchet.json").read_bytes()
    for e in (1, 2):
        for text in encodings(chain[e][0]) + encodings(chain[e][1]):
            assert text not in raw


def test_a_joiner_advances_what_the_peer_handed_over(a: RatchetKeyring, tmp_path: Path) -> None:
    """A peer that has not advanced yet hands over an overdue epoch; the
    joiner's first advance removes it."""
    now = deadline(2)
    late = join(a, tmp_path / "host-c" / "ratchet.json", now)
    assert late.oldest_epoch == 1
    assert late.advance(now, DESTROY_AFTER) == [1, 2]


# ---------------------------------------------- processes sharing one file
def test_processes_sharing_a_file_never_move_it_backwards(a: RatchetKeyring, host_a: Path) -> None:
    other = RatchetKeyring.load(host_a)  # a second process on the same host
    _, w1 = other.wrap(dek(1), FILE, NOW)
    assert a.advance(deadline(1), DESTROY_AFTER) == [1]
    # The other process's clock is a little behind: by its own reckoning
    # nothing is due, yet it adopts what the file says.
    assert other.advance(deadline(1) - 5.0, DESTROY_AFTER) == [1]
    assert json.loads(host_a.read_text())["epoch"] == 2
    with pytest.raises(KeyNotFound):
        other.unwrap(1, FILE, w1, deadline(1))


def test_advance_refuses_a_file_holding_another_ratchet(
    a: RatchetKeyring, host_a: Path, tmp_path: Path
) -> None:
    stranger = tmp_path / "stranger.json"
    RatchetKeyring.create(stranger, NOW, PERIOD, genesis=GENESIS)
    for later in (False, True):
        if later:  # the stranger's file is ahead of ours
            RatchetKeyring.load(stranger).advance(deadline(1), DESTROY_AFTER)
        secret = file_secret(stranger)
        shutil.copy2(stranger, host_a)
        with pytest.raises(ConfigError) as err:
            a.advance(deadline(1), DESTROY_AFTER)
        assert str(host_a) in str(err.value) and "different ratchet" in str(err.value)
        for text in encodings(secret):
            assert text.decode("latin-1") not in str(err.value)
    assert a.oldest_epoch == 1


def test_advance_refuses_a_foreign_file_that_is_behind(
    a: RatchetKeyring, host_a: Path, tmp_path: Path
) -> None:
    """A stale file is pushed forward only if it lies on our own chain."""
    a.advance(deadline(2), DESTROY_AFTER)  # we are at epoch 3
    stranger = tmp_path / "stranger.json"
    RatchetKeyring.create(stranger, NOW, PERIOD, genesis=GENESIS)  # another ratchet's epoch 1
    shutil.copy2(stranger, host_a)
    with pytest.raises(ConfigError, match="different ratchet"):
        a.advance(deadline(2), DESTROY_AFTER)
    assert host_a.read_bytes() == stranger.read_bytes()  # left for a human to look at
    assert a.oldest_epoch == 3


def test_advance_refuses_a_file_with_another_schedule(a: RatchetKeyring, host_a: Path) -> None:
    doc = json.loads(host_a.read_text())
    doc["period"] = 60.0
    host_a.write_text(json.dumps(doc))
    with pytest.raises(ConfigError, match="different ratchet"):
        a.advance(deadline(1), DESTROY_AFTER)


def test_advance_refuses_a_file_ahead_of_the_clock(a: RatchetKeyring, host_a: Path) -> None:
    later = RatchetKeyring.load(host_a)
    later.advance(deadline(5), DESTROY_AFTER)  # epochs 1..5 gone, file at 6
    with pytest.raises(ConfigError, match="ahead of the clock"):
        a.advance(at_epoch(2), DESTROY_AFTER)
    assert a.oldest_epoch == 1


def test_wrap_and_unwrap_stay_correct_while_advancing(a: RatchetKeyring) -> None:
    errors: list[BaseException] = []
    stop = threading.Event()
    now = at_epoch(30)

    def worker() -> None:
        try:
            while not stop.is_set():
                kek_id, wrapped = a.wrap(dek(1), FILE, now)
                assert a.unwrap(kek_id, FILE, wrapped, now) == dek(1)
        except BaseException as exc:  # pragma: no cover - reported below
            errors.append(exc)

    threads = [threading.Thread(target=worker) for _ in range(4)]
    for t in threads:
        t.start()
    destroyed: list[int] = []
    for e in range(1, 29):
        destroyed += a.advance(GENESIS + e * PERIOD + DESTROY_AFTER, DESTROY_AFTER)
    stop.set()
    for t in threads:
        t.join()
    assert errors == []
    assert destroyed == list(range(1, 29))


# --------------------------------------------------------------- from_state
def test_from_state_writes_a_private_file_and_refuses_to_overwrite(
    a: RatchetKeyring, host_b: Path
) -> None:
    state = a.export_state()
    ring = RatchetKeyring.from_state(host_b, state)
    assert mode(host_b) == 0o600 and mode(host_b.parent) == 0o700
    assert ring.export_state() == state
    with pytest.raises(FileExistsError):
        RatchetKeyring.from_state(host_b, state)
    with pytest.raises(TypeError):
        RatchetKeyring.from_state(host_b.with_name("x.json"), (1.0, 1.0, 1, b"x" * 32))  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("genesis", "period", "epoch", "secret"),
    [
        (-1.0, PERIOD, 1, bytes(32)),
        (math.nan, PERIOD, 1, bytes(32)),
        (GENESIS, 0.0, 1, bytes(32)),
        (GENESIS, math.inf, 1, bytes(32)),
        (GENESIS, PERIOD, 0, bytes(32)),
        (GENESIS, PERIOD, MAX_ID + 1, bytes(32)),
        (GENESIS, PERIOD, True, bytes(32)),
        (GENESIS, PERIOD, 1, bytes(31)),
        (GENESIS, PERIOD, 1, "x" * 32),
    ],
)
def test_state_rejects_impossible_values(
    genesis: float, period: float, epoch: int, secret: bytes
) -> None:
    with pytest.raises(ValueError, match="invalid ratchet state"):
        RatchetState(genesis, period, epoch, secret)


# ---------------------------------------------------------- malformed files
def _valid_doc(secret: bytes) -> dict[str, object]:
    return {
        "format": "filestore-ratchet/1",
        "genesis": GENESIS,
        "period": PERIOD,
        "epoch": 3,
        "secret": base64.b64encode(secret).decode(),
    }


SECRET = hashlib.sha256(b"a secret that must not leak").digest()


@pytest.mark.parametrize(
    ("name", "content"),
    [
        ("not json", b"{" + base64.b64encode(SECRET) + b"\n"),
        ("not an object", json.dumps([base64.b64encode(SECRET).decode()]).encode()),
        ("keyring format", json.dumps({**_valid_doc(SECRET), "format": "filestore-keyring/1"})),
        ("no format", json.dumps({k: v for k, v in _valid_doc(SECRET).items() if k != "format"})),
        ("no secret", json.dumps({**_valid_doc(SECRET), "secret": None})),
        (
            "short secret",
            json.dumps({**_valid_doc(SECRET), "secret": base64.b64encode(SECRET[:31]).decode()}),
        ),
        ("bad base64", json.dumps({**_valid_doc(SECRET), "secret": SECRET.hex() + "!"})),
        ("epoch 0", json.dumps({**_valid_doc(SECRET), "epoch": 0})),
        ("epoch text", json.dumps({**_valid_doc(SECRET), "epoch": "3"})),
        ("epoch float", json.dumps({**_valid_doc(SECRET), "epoch": 3.0})),
        ("epoch bool", json.dumps({**_valid_doc(SECRET), "epoch": True})),
        ("epoch too big", json.dumps({**_valid_doc(SECRET), "epoch": MAX_ID + 1})),
        ("period 0", json.dumps({**_valid_doc(SECRET), "period": 0})),
        ("period NaN", json.dumps({**_valid_doc(SECRET), "period": math.nan})),
        ("period text", json.dumps({**_valid_doc(SECRET), "period": "3600"})),
        (
            "genesis missing",
            json.dumps({k: v for k, v in _valid_doc(SECRET).items() if k != "genesis"}),
        ),
        ("genesis negative", json.dumps({**_valid_doc(SECRET), "genesis": -5.0})),
    ],
)
def test_malformed_file_is_refused_without_leaking(
    tmp_path: Path, name: str, content: str | bytes
) -> None:
    path = tmp_path / "ratchet.json"
    path.write_bytes(content.encode() if isinstance(content, str) else content)
    path.chmod(0o600)
    with pytest.raises(ConfigError) as err:
        RatchetKeyring.load(path)
    message = str(err.value)
    assert str(path) in message and "malformed" in message
    for text in encodings(SECRET):
        assert text.decode("latin-1") not in message
    assert err.value.__cause__ is None and err.value.__context__ is None


def test_a_valid_document_loads(tmp_path: Path) -> None:
    """The counterpart of the malformed cases: only the broken field fails."""
    path = tmp_path / "ratchet.json"
    path.write_text(json.dumps(_valid_doc(SECRET)))
    path.chmod(0o600)
    ring = RatchetKeyring.load(path)
    assert (ring.oldest_epoch, ring.export_state().secret) == (3, SECRET)


@pytest.mark.parametrize("bad_mode", [0o640, 0o644, 0o604, 0o660])
def test_a_file_others_can_read_is_refused(a: RatchetKeyring, host_a: Path, bad_mode: int) -> None:
    secret = file_secret(host_a)
    host_a.chmod(bad_mode)
    for attempt in (
        lambda: RatchetKeyring.load(host_a),
        lambda: a.advance(deadline(1), DESTROY_AFTER),
    ):
        with pytest.raises(ConfigError) as err:
            attempt()
        message = str(err.value)
        assert str(host_a) in message and "group or others" in message
        for text in encodings(secret):
            assert text.decode("latin-1") not in message
    assert a.oldest_epoch == 1
    host_a.chmod(0o600)
    assert RatchetKeyring.load(host_a).oldest_epoch == 1


# ------------------------------------------------------------------- leaks
def test_no_key_bytes_in_reprs_or_errors(a: RatchetKeyring, host_a: Path) -> None:
    a.wrap(dek(1), FILE, at_epoch(3))
    chain = spec_chain(file_secret(host_a), 3)
    state = a.export_state()
    texts = [repr(a), str(a), repr(state), str(state), repr(a._chain[2])]
    _, wrapped = a.wrap(dek(1), FILE, at_epoch(3))
    with pytest.raises(IntegrityError) as tampered:
        a.unwrap(3, OTHER_FILE, wrapped, at_epoch(3))
    with pytest.raises(KeyNotFound) as future:
        a.unwrap(9, FILE, wrapped, at_epoch(3))
    texts += [str(tampered.value), str(future.value)]
    a.advance(deadline(1), DESTROY_AFTER)
    with pytest.raises(KeyNotFound) as gone:
        a.unwrap(1, FILE, wrapped, deadline(1))
    texts.append(str(gone.value))
    assert "RatchetKeyring(" in texts[0] and "oldest_epoch=1" in texts[0]
    for e in (1, 2, 3):
        for secret in (chain[e][0], chain[e][1]):
            for enc in encodings(secret):
                for text in texts:
                    assert enc.decode("latin-1") not in text
