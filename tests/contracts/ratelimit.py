"""The behaviour every ``RateLimiter`` must have, written once.

Subclass ``RateLimiterContract`` in a ``Test*`` class and provide:

* ``limiter``: a fresh limiter with no buckets;
* ``advance``: ``async (seconds) -> None`` that lets that much limiter time pass (a fake
  clock for the in-process one, real sleep for Redis, whose clock is its own);
* ``elapsed``: ``() -> float``, seconds on the limiter's clock since the test began.

Rates are chosen so the real-time implementation stays fast (fractions of a second).
"""

from __future__ import annotations

import asyncio
import math
from collections.abc import AsyncIterator, Awaitable, Callable

import pytest

from cluster.errors import InvalidInputError
from cluster.security.ratelimit import BucketLimit, RateLimiter

Advance = Callable[[float], Awaitable[None]]
Elapsed = Callable[[], float]


async def drive(
    limiter: RateLimiter,
    key: str,
    limit: BucketLimit,
    *,
    seconds: float,
    step_s: float,
    advance: Advance,
    elapsed: Elapsed,
) -> int:
    """Ask for one token every ``step_s`` for ``seconds``; return how many were granted."""
    granted = 0
    start = elapsed()
    while elapsed() - start < seconds:
        if (await limiter.acquire(key, limit)).allowed:
            granted += 1
        await advance(step_s)
    return granted


class RateLimiterContract:
    """Behaviour tests shared by MemoryRateLimiter and RedisRateLimiter."""

    @pytest.fixture
    async def limiter(self) -> AsyncIterator[RateLimiter]:
        raise NotImplementedError("subclasses provide a fresh limiter")
        yield  # pragma: no cover

    @pytest.fixture
    def advance(self) -> Advance:
        raise NotImplementedError("subclasses say how limiter time passes")

    @pytest.fixture
    def elapsed(self) -> Elapsed:
        raise NotImplementedError("subclasses say how limiter time is read")

    async def test_a_full_bucket_grants_its_burst_then_refuses(self, limiter: RateLimiter) -> None:
        limit = BucketLimit(rate_per_s=1.0, burst=5)
        decisions = [await limiter.acquire("k", limit) for _ in range(6)]
        assert [d.allowed for d in decisions] == [True] * 5 + [False]
        assert decisions[4].remaining == pytest.approx(0.0, abs=0.05)

    async def test_a_refusal_says_when_one_token_is_back(self, limiter: RateLimiter) -> None:
        limit = BucketLimit(rate_per_s=4.0, burst=2)
        for _ in range(2):
            assert (await limiter.acquire("k", limit)).allowed
        refused = await limiter.acquire("k", limit)
        assert not refused.allowed
        # One token at 4/s takes 0.25 s (a little less once the real clock moved on).
        assert 0.15 < refused.retry_after_s <= 0.25
        assert refused.retry_after_header == "1"

    async def test_tokens_refill_at_the_rate(self, limiter: RateLimiter, advance: Advance) -> None:
        limit = BucketLimit(rate_per_s=10.0, burst=3)
        for _ in range(3):
            assert (await limiter.acquire("k", limit)).allowed
        assert not (await limiter.acquire("k", limit)).allowed
        await advance(0.25)  # 2.5 tokens back
        assert (await limiter.acquire("k", limit)).allowed
        assert (await limiter.acquire("k", limit)).allowed
        assert not (await limiter.acquire("k", limit)).allowed

    async def test_refill_stops_at_the_burst(self, limiter: RateLimiter, advance: Advance) -> None:
        limit = BucketLimit(rate_per_s=20.0, burst=2)
        assert (await limiter.acquire("k", limit)).allowed
        await advance(0.5)  # would be 10 tokens without the cap
        granted = [(await limiter.acquire("k", limit)).allowed for _ in range(3)]
        assert granted == [True, True, False]

    async def test_buckets_are_independent(self, limiter: RateLimiter) -> None:
        limit = BucketLimit(rate_per_s=1.0, burst=2)
        for _ in range(2):
            assert (await limiter.acquire("key:a:read", limit)).allowed
        assert not (await limiter.acquire("key:a:read", limit)).allowed
        assert (await limiter.acquire("key:b:read", limit)).allowed
        assert (await limiter.acquire("key:a:write", limit)).allowed

    async def test_a_cost_takes_that_many_tokens(self, limiter: RateLimiter) -> None:
        limit = BucketLimit(rate_per_s=1.0, burst=5)
        assert (await limiter.acquire("k", limit, cost=4)).allowed
        refused = await limiter.acquire("k", limit, cost=2)
        assert not refused.allowed
        assert refused.retry_after_s == pytest.approx(1.0, abs=0.1)
        assert (await limiter.acquire("k", limit, cost=1)).allowed

    @pytest.mark.parametrize("cost", [0, -1, 6, math.nan, math.inf])
    async def test_impossible_costs_are_refused(self, limiter: RateLimiter, cost: float) -> None:
        with pytest.raises(InvalidInputError, match="cost"):
            await limiter.acquire("k", BucketLimit(rate_per_s=1.0, burst=5), cost=cost)

    async def test_peek_takes_nothing(self, limiter: RateLimiter) -> None:
        limit = BucketLimit(rate_per_s=1.0, burst=3)
        assert await limiter.peek("k", limit) == pytest.approx(3.0)
        await limiter.acquire("k", limit)
        assert await limiter.peek("k", limit) == pytest.approx(2.0, abs=0.05)
        assert await limiter.peek("k", limit) == pytest.approx(2.0, abs=0.05)

    async def test_an_idle_bucket_is_full_again(
        self, limiter: RateLimiter, advance: Advance
    ) -> None:
        limit = BucketLimit(rate_per_s=10.0, burst=2)
        for _ in range(2):
            await limiter.acquire("k", limit)
        await advance(0.35)  # past the refill time (0.2 s): the state may be gone
        assert await limiter.peek("k", limit) == pytest.approx(2.0)

    async def test_concurrent_requests_get_exactly_the_burst(self, limiter: RateLimiter) -> None:
        limit = BucketLimit(rate_per_s=0.01, burst=20)
        decisions = await asyncio.gather(*(limiter.acquire("k", limit) for _ in range(50)))
        assert sum(d.allowed for d in decisions) == 20

    async def test_sustained_rate_is_within_ten_percent(
        self, limiter: RateLimiter, advance: Advance, elapsed: Elapsed
    ) -> None:
        """50/s for 2 s, asked for four times as often: beyond the burst, 50/s get through.

        The burst (5) is what absorbs a real clock's jitter: a request that comes late
        finds the token waiting instead of lost to the cap.
        """
        limit = BucketLimit(rate_per_s=50.0, burst=5)
        start = elapsed()
        granted = await drive(
            limiter, "k", limit, seconds=2.0, step_s=0.005, advance=advance, elapsed=elapsed
        )
        rate = (granted - limit.burst) / (elapsed() - start)
        assert abs(rate - limit.rate_per_s) <= 0.1 * limit.rate_per_s, (granted, rate)
