"""MemoryCache: the cache contract on a fake clock, plus its LRU bound."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import pytest
from hypothesis import given
from hypothesis import strategies as st

from cluster.cache import Cache, MemoryCache
from cluster.errors import InvalidInputError
from tests.contracts.cache import Advance, CacheContract


class FakeClock:
    """A monotonic clock that moves only when told to."""

    def __init__(self, start: float = 1000.0) -> None:
        self.now = start

    def __call__(self) -> float:
        return self.now

    async def advance(self, seconds: float) -> None:
        self.now += seconds


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


class TestMemoryCacheContract(CacheContract):
    @pytest.fixture
    async def cache(self, clock: FakeClock) -> AsyncIterator[Cache]:
        cache = MemoryCache(now=clock, prefix="datapunk:test:")
        yield cache
        await cache.close()

    @pytest.fixture
    async def other_namespace(self, clock: FakeClock) -> AsyncIterator[Cache]:
        # Each MemoryCache owns its store, so isolation holds by construction here;
        # the test still pins down that nothing is shared through module state.
        cache = MemoryCache(now=clock, prefix="datapunk:other:")
        yield cache
        await cache.close()

    @pytest.fixture
    def advance(self, clock: FakeClock) -> Advance:
        return clock.advance


def test_memory_cache_satisfies_the_port() -> None:
    assert isinstance(MemoryCache(), Cache)


async def test_expiry_is_exact_on_the_injected_clock(clock: FakeClock) -> None:
    cache = MemoryCache(now=clock)
    await cache.set("k", b"v", ttl_s=5)
    await clock.advance(4.999)
    assert await cache.get("k") == b"v"
    assert await cache.ttl("k") == pytest.approx(0.001)
    await clock.advance(0.001)
    assert await cache.get("k") is None


async def test_oldest_entry_is_evicted_past_max_entries() -> None:
    cache = MemoryCache(max_entries=3)
    for key in "abcd":
        await cache.set(key, key.encode())
    assert len(cache) == 3
    assert await cache.get_many(list("abcd")) == [None, b"b", b"c", b"d"]


async def test_reads_and_incr_refresh_recency() -> None:
    cache = MemoryCache(max_entries=3)
    await cache.set("a", b"1")
    await cache.set("b", b"2")
    await cache.set("c", b"3")
    await cache.get("a")  # a is now the most recently used
    await cache.incr("b")  # then b
    await cache.set("d", b"4")  # evicts c, the least recently used
    assert await cache.get_many(["a", "b", "c", "d"]) == [b"1", b"3", None, b"4"]


async def test_expired_entries_are_dropped_when_touched(clock: FakeClock) -> None:
    cache = MemoryCache(now=clock)
    await cache.set("k", b"v", ttl_s=1)
    await clock.advance(2)
    assert len(cache) == 1
    assert await cache.get("k") is None
    assert len(cache) == 0


@pytest.mark.parametrize("bad", [0, -1, 1.5, True])
def test_max_entries_must_be_a_positive_int(bad: object) -> None:
    with pytest.raises(InvalidInputError, match="max_entries"):
        MemoryCache(max_entries=bad)  # type: ignore[arg-type]


async def test_close_empties_the_store() -> None:
    cache = MemoryCache()
    await cache.set("k", b"v")
    await cache.close()
    assert len(cache) == 0
    await cache.close()  # twice is fine


@given(
    keys=st.lists(st.sampled_from("abcdefgh"), max_size=60),
    max_entries=st.integers(min_value=1, max_value=5),
)
def test_lru_keeps_exactly_the_most_recent_distinct_keys(keys: list[str], max_entries: int) -> None:
    """Whatever the write order, the survivors are the last ``max_entries`` distinct keys."""

    async def scenario() -> None:
        cache = MemoryCache(max_entries=max_entries)
        for key in keys:
            await cache.set(key, key.encode())
        recent: list[str] = []
        for key in reversed(keys):
            if key not in recent:
                recent.append(key)
        survivors = set(recent[:max_entries])
        assert len(cache) == len(survivors)
        for key in set(keys):
            expected = key.encode() if key in survivors else None
            assert await cache.get(key) == expected

    asyncio.run(scenario())
