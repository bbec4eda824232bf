"""The gateway's API-key cache: TTLs, refusals, bounds, concurrency."""

from __future__ import annotations

import asyncio
from datetime import timedelta

import pytest

from cluster.errors import AuthenticationError, ServiceUnavailableError
from cluster.security.auth_cache import CachedAuthenticator
from cluster.security.principal import Principal
from cluster.security.rbac import Role
from tests.clock import FakeClock

GOOD = "dp_good"
BAD = "dp_bad"


class FakeStore:
    """Knows some tokens; counts lookups; can be told to fail or to block."""

    def __init__(self) -> None:
        self.principals: dict[str, Principal] = {}
        self.calls: list[str] = []
        self.down = False
        self.gate: asyncio.Event | None = None

    def add(self, token: str, key_id: str, **kwargs: object) -> Principal:
        principal = Principal(key_id=key_id, name=key_id, role=Role.ANALYST, **kwargs)
        self.principals[token] = principal
        return principal

    async def authenticate(self, token: str) -> Principal:
        self.calls.append(token)
        if self.gate is not None:
            await self.gate.wait()
        if self.down:
            raise ServiceUnavailableError(service="db", target="x", reason="down", fix="start it")
        if token not in self.principals:
            raise AuthenticationError("unknown API key", reason="unknown")
        return self.principals[token]


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture
def store() -> FakeStore:
    store = FakeStore()
    store.add(GOOD, "key_good")
    return store


def cached(
    store: FakeStore, clock: FakeClock, ttl_s: float = 5.0, **kwargs: object
) -> CachedAuthenticator:
    return CachedAuthenticator(store, ttl_s=ttl_s, now=clock.monotonic, **kwargs)


async def test_success_is_cached_for_the_ttl(store: FakeStore, clock: FakeClock) -> None:
    auth = cached(store, clock)
    first = await auth.authenticate(GOOD)
    clock.advance(4.9)
    assert await auth.authenticate(GOOD) == first
    assert store.calls == [GOOD]
    clock.advance(0.1)
    await auth.authenticate(GOOD)
    assert store.calls == [GOOD, GOOD]


async def test_failure_is_cached_for_at_most_one_second(store: FakeStore, clock: FakeClock) -> None:
    auth = cached(store, clock, ttl_s=30)
    for _ in range(3):
        with pytest.raises(AuthenticationError, match="unknown API key") as caught:
            await auth.authenticate(BAD)
    assert caught.value.fields == {"reason": "unknown"}
    assert store.calls == [BAD]
    clock.advance(1.0)
    store.add(BAD, "key_new")  # created meanwhile: works once the refusal lapses
    assert (await auth.authenticate(BAD)).key_id == "key_new"


async def test_short_ttl_bounds_failure_caching_too(store: FakeStore, clock: FakeClock) -> None:
    auth = cached(store, clock, ttl_s=0.2)
    with pytest.raises(AuthenticationError):
        await auth.authenticate(BAD)
    clock.advance(0.2)
    with pytest.raises(AuthenticationError):
        await auth.authenticate(BAD)
    assert store.calls == [BAD, BAD]


async def test_zero_ttl_caches_nothing(store: FakeStore, clock: FakeClock) -> None:
    auth = cached(store, clock, ttl_s=0)
    await auth.authenticate(GOOD)
    await auth.authenticate(GOOD)
    with pytest.raises(AuthenticationError):
        await auth.authenticate(BAD)
    assert store.calls == [GOOD, GOOD, BAD]
    assert len(auth) == 0


async def test_other_errors_are_not_cached(store: FakeStore, clock: FakeClock) -> None:
    auth = cached(store, clock)
    store.down = True
    with pytest.raises(ServiceUnavailableError):
        await auth.authenticate(GOOD)
    store.down = False
    assert (await auth.authenticate(GOOD)).key_id == "key_good"
    assert store.calls == [GOOD, GOOD]


async def test_a_key_is_not_trusted_past_its_expiry(store: FakeStore, clock: FakeClock) -> None:
    store.add("dp_soon", "key_soon", expires_at=clock.now() + timedelta(seconds=2))
    auth = cached(store, clock, ttl_s=60, utcnow=clock.now)
    await auth.authenticate("dp_soon")
    clock.advance(1.9)
    await auth.authenticate("dp_soon")
    assert store.calls == ["dp_soon"]
    clock.advance(0.1)
    await auth.authenticate("dp_soon")
    assert store.calls == ["dp_soon", "dp_soon"]


async def test_size_is_bounded_lru(store: FakeStore, clock: FakeClock) -> None:
    for i in range(3):
        store.add(f"dp_{i}", f"key_{i}")
    auth = cached(store, clock, max_entries=2)
    await auth.authenticate("dp_0")
    await auth.authenticate("dp_1")
    await auth.authenticate("dp_0")  # dp_0 is now the most recent
    await auth.authenticate("dp_2")  # evicts dp_1
    store.calls.clear()
    await auth.authenticate("dp_0")
    await auth.authenticate("dp_1")
    assert store.calls == ["dp_1"]


async def test_bad_tokens_cannot_evict_good_keys(store: FakeStore, clock: FakeClock) -> None:
    auth = cached(store, clock, max_entries=2)
    await auth.authenticate(GOOD)
    for i in range(10):
        with pytest.raises(AuthenticationError):
            await auth.authenticate(f"dp_flood{i}")
    store.calls.clear()
    await auth.authenticate(GOOD)
    assert store.calls == []
    assert len(auth) == 3


async def test_concurrent_misses_share_one_lookup(store: FakeStore, clock: FakeClock) -> None:
    store.gate = asyncio.Event()
    auth = cached(store, clock)
    waiters = [asyncio.create_task(auth.authenticate(GOOD)) for _ in range(20)]
    await asyncio.sleep(0)
    store.gate.set()
    results = await asyncio.gather(*waiters)
    assert {p.key_id for p in results} == {"key_good"}
    assert store.calls == [GOOD]


async def test_a_cancelled_caller_does_not_cancel_the_others(
    store: FakeStore, clock: FakeClock
) -> None:
    store.gate = asyncio.Event()
    auth = cached(store, clock)
    first = asyncio.create_task(auth.authenticate(GOOD))
    second = asyncio.create_task(auth.authenticate(GOOD))
    await asyncio.sleep(0)
    first.cancel()
    store.gate.set()
    assert (await second).key_id == "key_good"
    assert first.cancelled()


async def test_invalidate_forgets_a_key(store: FakeStore, clock: FakeClock) -> None:
    auth = cached(store, clock)
    await auth.authenticate(GOOD)
    assert auth.invalidate("key_good") == 1
    await auth.authenticate(GOOD)
    assert store.calls == [GOOD, GOOD]
    auth.clear()
    assert len(auth) == 0


def test_arguments_are_checked(store: FakeStore, clock: FakeClock) -> None:
    with pytest.raises(ValueError, match="ttl_s"):
        cached(store, clock, ttl_s=-1)
    with pytest.raises(ValueError, match="max_entries"):
        cached(store, clock, max_entries=0)
