"""The behaviour every ``Cache`` implementation must have, written once.

Subclass ``CacheContract`` in a ``Test*`` class and provide three fixtures:

* ``cache``: a fresh, empty cache with prefix ``datapunk:test:``;
* ``other_namespace``: a second cache on the *same* backend with another prefix;
* ``advance``: ``async (seconds) -> None`` that lets that much cache time pass
  (move a fake clock for the memory cache, really sleep for Redis).

Expiry tests use ``SHORT_TTL`` (0.2 s) so the real-time implementation stays fast.
"""

from __future__ import annotations

import asyncio
import math
from collections.abc import AsyncIterator, Awaitable, Callable

import pytest

from cluster.cache import Cache
from cluster.errors import InvalidInputError

Advance = Callable[[float], Awaitable[None]]

SHORT_TTL = 0.2
PAST_SHORT_TTL = SHORT_TTL + 0.15  # margin for Redis's millisecond clock


class CacheContract:
    """Behaviour tests shared by MemoryCache and RedisCache."""

    @pytest.fixture
    async def cache(self) -> AsyncIterator[Cache]:
        raise NotImplementedError("subclasses provide a fresh cache")
        yield  # pragma: no cover - makes this an async generator like the overrides

    @pytest.fixture
    async def other_namespace(self) -> AsyncIterator[Cache]:
        raise NotImplementedError("subclasses provide a cache on the same backend")
        yield  # pragma: no cover

    @pytest.fixture
    def advance(self) -> Advance:
        raise NotImplementedError("subclasses say how cache time passes")

    # --- get / set -----------------------------------------------------------

    async def test_get_of_missing_key_is_none(self, cache: Cache) -> None:
        assert await cache.get("nope") is None

    async def test_set_then_get_returns_value(self, cache: Cache) -> None:
        await cache.set("k", b"v")
        assert await cache.get("k") == b"v"

    async def test_set_overwrites_value_and_drops_old_ttl(self, cache: Cache) -> None:
        await cache.set("k", b"one", ttl_s=10)
        await cache.set("k", b"two")
        assert await cache.get("k") == b"two"
        assert await cache.ttl("k") is None

    @pytest.mark.parametrize(
        "value", [b"", b"\x00\xff\xfe\x80", "zürich ✓".encode(), bytes(range(256))]
    )
    async def test_bytes_round_trip_unchanged(self, cache: Cache, value: bytes) -> None:
        await cache.set("k", value)
        got = await cache.get("k")
        assert got == value
        assert type(got) is bytes

    async def test_bytearray_is_copied_on_set(self, cache: Cache) -> None:
        buffer = bytearray(b"abc")
        await cache.set("k", buffer)
        buffer[0] = ord("X")
        assert await cache.get("k") == b"abc"

    async def test_non_bytes_value_is_refused(self, cache: Cache) -> None:
        with pytest.raises(TypeError, match="bytes"):
            await cache.set("k", "text")  # type: ignore[arg-type]

    @pytest.mark.parametrize("ttl_s", [0, -1, math.nan, math.inf])
    async def test_invalid_ttl_is_refused(self, cache: Cache, ttl_s: float) -> None:
        with pytest.raises(InvalidInputError, match="ttl_s"):
            await cache.set("k", b"v", ttl_s=ttl_s)
        with pytest.raises(InvalidInputError, match="ttl_s"):
            await cache.incr("n", ttl_s=ttl_s)
        assert await cache.get("k") is None

    # --- expiry --------------------------------------------------------------

    async def test_value_expires_after_ttl(self, cache: Cache, advance: Advance) -> None:
        await cache.set("k", b"v", ttl_s=SHORT_TTL)
        await cache.set("forever", b"v")
        assert await cache.get("k") == b"v"
        await advance(PAST_SHORT_TTL)
        assert await cache.get("k") is None
        assert await cache.get("forever") == b"v"

    async def test_ttl_reports_remaining_seconds(self, cache: Cache) -> None:
        await cache.set("timed", b"v", ttl_s=10)
        await cache.set("forever", b"v")
        remaining = await cache.ttl("timed")
        assert remaining is not None
        assert 9.0 < remaining <= 10.0
        assert await cache.ttl("forever") is None
        assert await cache.ttl("missing") is None

    # --- set_if_absent -------------------------------------------------------

    async def test_set_if_absent_only_first_write_wins(self, cache: Cache) -> None:
        assert await cache.set_if_absent("lock", b"a") is True
        assert await cache.set_if_absent("lock", b"b") is False
        assert await cache.get("lock") == b"a"

    async def test_set_if_absent_succeeds_again_after_expiry(
        self, cache: Cache, advance: Advance
    ) -> None:
        assert await cache.set_if_absent("lock", b"a", ttl_s=SHORT_TTL) is True
        await advance(PAST_SHORT_TTL)
        assert await cache.set_if_absent("lock", b"b", ttl_s=10) is True
        assert await cache.get("lock") == b"b"

    async def test_concurrent_set_if_absent_has_one_winner(self, cache: Cache) -> None:
        results = await asyncio.gather(
            *(cache.set_if_absent("lock", str(i).encode(), ttl_s=10) for i in range(20))
        )
        assert sum(results) == 1
        assert await cache.get("lock") == str(results.index(True)).encode()

    # --- delete --------------------------------------------------------------

    async def test_delete_says_whether_key_existed(self, cache: Cache) -> None:
        await cache.set("k", b"v")
        assert await cache.delete("k") is True
        assert await cache.get("k") is None
        assert await cache.delete("k") is False

    async def test_delete_of_expired_key_is_false(self, cache: Cache, advance: Advance) -> None:
        await cache.set("k", b"v", ttl_s=SHORT_TTL)
        await advance(PAST_SHORT_TTL)
        assert await cache.delete("k") is False

    # --- incr ----------------------------------------------------------------

    async def test_incr_creates_then_increments(self, cache: Cache) -> None:
        assert await cache.incr("n") == 1
        assert await cache.incr("n") == 2
        assert await cache.incr("n", amount=5) == 7
        assert await cache.incr("n", amount=-10) == -3
        assert await cache.get("n") == b"-3"

    async def test_incr_continues_a_counter_stored_with_set(self, cache: Cache) -> None:
        await cache.set("n", b"41")
        assert await cache.incr("n") == 42

    async def test_incr_ttl_applies_only_when_key_is_created(self, cache: Cache) -> None:
        await cache.incr("window", ttl_s=10)
        await cache.incr("window", ttl_s=1000)
        remaining = await cache.ttl("window")
        assert remaining is not None
        assert remaining <= 10.0
        await cache.incr("plain")
        await cache.incr("plain", ttl_s=10)
        assert await cache.ttl("plain") is None

    async def test_incr_window_restarts_after_expiry(self, cache: Cache, advance: Advance) -> None:
        assert await cache.incr("rate", ttl_s=SHORT_TTL) == 1
        assert await cache.incr("rate", ttl_s=SHORT_TTL) == 2
        await advance(PAST_SHORT_TTL)
        assert await cache.incr("rate", ttl_s=SHORT_TTL) == 1

    @pytest.mark.parametrize("stored", [b"abc", b"1.5", b" 1", b"+1", b"01", b"", b"\xff"])
    async def test_incr_of_non_integer_is_invalid_input(self, cache: Cache, stored: bytes) -> None:
        await cache.set("n", stored)
        with pytest.raises(InvalidInputError, match="'n'"):
            await cache.incr("n", ttl_s=10)
        assert await cache.get("n") == stored

    async def test_incr_overflow_is_invalid_input(self, cache: Cache) -> None:
        await cache.set("n", str(2**63 - 1).encode())
        with pytest.raises(InvalidInputError, match="64-bit"):
            await cache.incr("n")
        assert await cache.get("n") == str(2**63 - 1).encode()

    async def test_fifty_concurrent_incr_end_at_fifty(self, cache: Cache) -> None:
        results = await asyncio.gather(*(cache.incr("hits", ttl_s=60) for _ in range(50)))
        assert sorted(results) == list(range(1, 51))
        assert await cache.get("hits") == b"50"

    # --- get_many, namespaces, ping ------------------------------------------

    async def test_get_many_keeps_order_and_reports_misses(self, cache: Cache) -> None:
        await cache.set("a", b"1")
        await cache.set("c", b"3")
        assert await cache.get_many(["c", "missing", "a", "c"]) == [b"3", None, b"1", b"3"]
        assert await cache.get_many([]) == []

    async def test_prefixes_isolate_instances(self, cache: Cache, other_namespace: Cache) -> None:
        await cache.set("shared", b"mine")
        assert await other_namespace.get("shared") is None
        await other_namespace.set("shared", b"theirs")
        assert await other_namespace.incr("count") == 1
        assert await cache.get("shared") == b"mine"
        assert await cache.incr("count") == 1
        assert await other_namespace.delete("shared") is True
        assert await cache.get("shared") == b"mine"

    async def test_ping_answers(self, cache: Cache) -> None:
        await cache.ping()
