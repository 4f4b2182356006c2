"""The verified-key cache: how long a key is believed without a lookup, and
what ends that at once.

Two stores on one database stand for this gateway and another process (the
``filestore keys revoke`` CLI): a revocation made elsewhere is seen within
the cache's ttl, one made through this process's store at once.
"""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest

from filestore.auth import KeyCache, authenticate, create_key
from filestore.clock import ManualClock
from filestore.errors import AuthError
from filestore.metadata.base import MetadataStore, Role
from filestore.metadata.sql import SQLMetadataStore
from tests.support.db import MetadataBackend

TTL = 1.0


@pytest.fixture
async def stores(metadata_backend: MetadataBackend) -> AsyncIterator[tuple[MetadataStore, ...]]:
    here = await SQLMetadataStore.open(metadata_backend.url)
    elsewhere = await SQLMetadataStore.open(metadata_backend.url)
    try:
        yield here, elsewhere
    finally:
        await elsewhere.close()
        await here.close()


async def _key(store: MetadataStore, clock: ManualClock) -> tuple[str, str]:
    token, record = await create_key(store, Role.CLIENT, "acme", clock.now())
    return f"Bearer {token}", record.key_id


async def test_revocation_elsewhere_is_seen_within_the_ttl(
    stores: tuple[MetadataStore, MetadataStore],
) -> None:
    here, elsewhere = stores
    clock = ManualClock()
    cache = KeyCache(clock, TTL)
    header, key_id = await _key(here, clock)
    assert (await authenticate(here, header, cache)).tenant == "acme"

    assert await elsewhere.api_keys.revoke(key_id, clock.now())
    # Still believed from the cache: that is the ttl's price ...
    clock.advance(TTL / 2)
    assert (await authenticate(here, header, cache)).key_id == key_id
    # ... and constant use does not extend it.
    clock.advance(TTL / 2)
    with pytest.raises(AuthError):
        await authenticate(here, header, cache)
    # Without a cache the revocation shows at once.
    with pytest.raises(AuthError):
        await authenticate(here, header)


async def test_revocation_in_this_process_is_immediate(
    stores: tuple[MetadataStore, MetadataStore],
) -> None:
    here, _ = stores
    clock = ManualClock()
    cache = KeyCache(clock, TTL)
    header, key_id = await _key(here, clock)
    other_header, _ = await _key(here, clock)
    await authenticate(here, header, cache)
    await authenticate(here, other_header, cache)

    assert await here.api_keys.revoke(key_id, clock.now())
    with pytest.raises(AuthError):
        await authenticate(here, header, cache)
    # The other key is read again, and is still good.
    assert (await authenticate(here, other_header, cache)).tenant == "acme"


async def test_a_cached_key_still_needs_its_secret(
    stores: tuple[MetadataStore, MetadataStore],
) -> None:
    here, _ = stores
    clock = ManualClock()
    cache = KeyCache(clock, TTL)
    header, _ = await _key(here, clock)
    await authenticate(here, header, cache)
    secret = header[-43:]
    wrong = header[: -len(secret)] + ("A" if secret[0] != "A" else "B") + secret[1:]
    with pytest.raises(AuthError):
        await authenticate(here, wrong, cache)


async def test_unknown_keys_are_never_remembered_and_the_cache_is_bounded(
    stores: tuple[MetadataStore, MetadataStore],
) -> None:
    here, elsewhere = stores
    clock = ManualClock()
    cache = KeyCache(clock, 60.0, max_entries=2)
    first, first_id = await _key(here, clock)
    later = [await _key(here, clock) for _ in range(2)]
    await authenticate(here, first, cache)
    for header, _ in later:  # two more lookups push the first one out
        await authenticate(here, header, cache)
    assert await elsewhere.api_keys.revoke(first_id, clock.now())
    with pytest.raises(AuthError):  # re-read, not believed from memory
        await authenticate(here, first, cache)
    # An id nobody has is looked up every time: created after a miss, it works.
    header, _ = await _key(elsewhere, clock)
    assert cache.get(here.api_keys, header.split("_")[1]) is None
    assert (await authenticate(here, header, cache)).tenant == "acme"


async def test_ttl_zero_turns_the_cache_off(
    stores: tuple[MetadataStore, MetadataStore],
) -> None:
    here, elsewhere = stores
    clock = ManualClock()
    cache = KeyCache(clock, 0.0)
    header, key_id = await _key(here, clock)
    await authenticate(here, header, cache)
    assert await elsewhere.api_keys.revoke(key_id, clock.now())
    with pytest.raises(AuthError):
        await authenticate(here, header, cache)
