"""The bench's upload bodies: the same bytes for every target, and never
more than one piece handed to the client's socket per write (a whole 64 MiB
block in one write cost the client five times the CPU of 1 MiB writes)."""

from __future__ import annotations

import hashlib

from bench.targets import PIECE, Payload


async def _joined(body: object) -> tuple[bytes, int]:
    assert not isinstance(body, bytes)
    parts = [bytes(piece) async for piece in body]  # type: ignore[attr-defined]
    assert all(0 < len(p) <= PIECE for p in parts)
    return b"".join(parts), len(parts)


def test_a_body_of_one_piece_is_the_bytes_themselves() -> None:
    payload = Payload.make(PIECE)
    assert payload.body() is payload.block
    small = Payload.make(4096)
    assert small.body() is small.block


async def test_a_block_larger_than_a_piece_goes_in_pieces() -> None:
    payload = Payload.make(3 * PIECE + 5)
    assert len(payload.block) == payload.size  # one block holds it
    data, count = await _joined(payload.body())
    assert data == payload.block
    assert count == 4


async def test_a_size_past_the_block_repeats_it_in_pieces() -> None:
    block = bytes(range(256)) * (PIECE // 256 + 3)  # not a whole number of pieces
    payload = Payload(2 * len(block) + 7, block)
    data, _count = await _joined(payload.body())
    assert len(data) == payload.size
    expected = (block * 3)[: payload.size]
    assert hashlib.sha256(data).digest() == hashlib.sha256(expected).digest()
