"""RedisRateLimiter: the bucket contract against the real Redis (db 15), the script's
EVALSHA/NOSCRIPT path, buckets shared by replicas, and the gateway's 429 on Redis."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from pathlib import Path

import httpx
import pytest
import redis.asyncio as aioredis

from cluster.cache.redis_buckets import BUCKET_SCRIPT_SHA, RedisRateLimiter
from cluster.security.ratelimit import BucketLimit, RateLimiter, build_rate_limiter
from cluster.security.rbac import Role
from cluster.settings import load_settings
from serve_apps.gateway.asgi import GatewayDeps, create_app
from serve_apps.gateway.ratelimit import GatewayLimits
from tests.clock import FakeClock
from tests.contracts.ratelimit import Advance, Elapsed, RateLimiterContract
from tests.unit.gateway_support import authenticator, key_store

pytestmark = pytest.mark.integration


class TestRedisRateLimiterContract(RateLimiterContract):
    @pytest.fixture
    async def limiter(self, redis_url: str) -> AsyncIterator[RateLimiter]:
        limiter = RedisRateLimiter(redis_url)
        yield limiter
        await limiter.close()

    @pytest.fixture
    def advance(self) -> Advance:
        # Buckets refill on Redis's own clock; the only way to move it is to wait.
        return asyncio.sleep

    @pytest.fixture
    def elapsed(self) -> Elapsed:
        return time.monotonic


def test_redis_limiter_satisfies_the_port() -> None:
    assert isinstance(RedisRateLimiter("redis://127.0.0.1:6379/15"), RateLimiter)


def test_a_redis_url_means_redis_buckets(redis_url: str, data_dir: Path) -> None:
    settings = load_settings(data_dir=data_dir, redis_url=redis_url)
    assert isinstance(build_rate_limiter(settings), RedisRateLimiter)


async def test_a_flushed_script_is_sent_again(redis_url: str) -> None:
    raw = aioredis.Redis.from_url(redis_url)
    limiter = RedisRateLimiter(redis_url)
    limit = BucketLimit(rate_per_s=1.0, burst=3)
    try:
        await raw.script_flush()
        assert await raw.script_exists(BUCKET_SCRIPT_SHA) == [False]
        assert (await limiter.acquire("k", limit)).allowed  # NOSCRIPT, then EVAL
        assert await raw.script_exists(BUCKET_SCRIPT_SHA) == [True]
        assert (await limiter.acquire("k", limit)).allowed  # EVALSHA
        assert await limiter.peek("k", limit) == pytest.approx(1.0, abs=0.05)
    finally:
        await limiter.close()
        await raw.aclose()


async def test_a_bucket_is_a_hash_under_the_prefix_that_expires_when_full(
    redis_url: str,
) -> None:
    raw = aioredis.Redis.from_url(redis_url)
    limiter = RedisRateLimiter(redis_url)
    try:
        await limiter.acquire("key:k1:read", BucketLimit(rate_per_s=2.0, burst=10))
        stored = await raw.hgetall("datapunk:ratelimit:key:k1:read")
        assert set(stored) == {b"tokens", b"ts"}
        assert float(stored[b"tokens"]) == pytest.approx(9.0, abs=0.05)
        ttl_ms = await raw.pttl("datapunk:ratelimit:key:k1:read")
        assert 5000 < ttl_ms <= 6000  # 10 tokens at 2/s refill in 5 s, plus a second
    finally:
        await limiter.close()
        await raw.aclose()


async def test_two_replicas_share_one_bucket(redis_url: str) -> None:
    first, second = RedisRateLimiter(redis_url), RedisRateLimiter(redis_url)
    limit = BucketLimit(rate_per_s=0.01, burst=30)
    try:
        decisions = await asyncio.gather(
            *(limiter.acquire("shared", limit) for limiter in (first, second) * 25)
        )
        assert sum(d.allowed for d in decisions) == 30
    finally:
        await first.close()
        await second.close()


async def test_the_gateway_limits_at_the_configured_rate_on_redis(
    redis_url: str, data_dir: Path
) -> None:
    """50/s for 2 s of real time through the app: within 10 % of 50/s, then 429s."""
    settings = load_settings(
        data_dir=data_dir, redis_url=redis_url, rate_limits={"read_per_s": 50, "read_burst": 5}
    )
    clock = FakeClock()
    async with key_store(settings, clock) as store:
        token, _ = await store.create(Role.ANALYST)
        limits = GatewayLimits.from_settings(settings)
        app = create_app(GatewayDeps(authenticator=authenticator(store, clock), limits=limits))
        transport = httpx.ASGITransport(app=app)
        granted, refused, retry_after = 0, 0, set()
        async with httpx.AsyncClient(transport=transport, base_url="http://t") as http:
            start = time.monotonic()
            while time.monotonic() - start < 2.0:
                reply = await http.get("/api/v1/whoami", headers={"X-API-Key": token})
                if reply.status_code == 200:
                    granted += 1
                else:
                    assert reply.status_code == 429, reply.text
                    refused += 1
                    retry_after.add(reply.headers["retry-after"])
                await asyncio.sleep(0.004)
            seconds = time.monotonic() - start
        await limits.limiter.close()
    rate = (granted - 5) / seconds  # beyond the burst
    assert abs(rate - 50) <= 5, (granted, rate)
    assert refused > 0
    assert retry_after == {"1"}  # at 50/s a token is back within 20 ms: rounded up, 1 s
