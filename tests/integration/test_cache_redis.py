"""RedisCache: the cache contract against the real Redis (db 15), plus failure messages."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import pytest

from cluster.cache import Cache, RedisCache
from cluster.errors import ConfigError, ServiceUnavailableError
from tests.contracts.cache import Advance, CacheContract
from tests.integration.silent_server import silent_tcp_server

pytestmark = pytest.mark.integration


class TestRedisCacheContract(CacheContract):
    @pytest.fixture
    async def cache(self, redis_url: str) -> AsyncIterator[Cache]:
        cache = RedisCache(redis_url, prefix="datapunk:test:")
        yield cache
        await cache.close()

    @pytest.fixture
    async def other_namespace(self, redis_url: str) -> AsyncIterator[Cache]:
        cache = RedisCache(redis_url, prefix="datapunk:other:")
        yield cache
        await cache.close()

    @pytest.fixture
    def advance(self) -> Advance:
        # Redis expires keys on its own clock; the only way to move it is to wait.
        return asyncio.sleep


def test_redis_cache_satisfies_the_port() -> None:
    assert isinstance(RedisCache("redis://127.0.0.1:6379/15"), Cache)


async def test_keys_are_stored_under_the_prefix(redis_url: str) -> None:
    import redis.asyncio as aioredis

    cache = RedisCache(redis_url, prefix="svc:")
    raw = aioredis.Redis.from_url(redis_url)
    try:
        await cache.set("k", b"v")
        assert await raw.get("svc:k") == b"v"
    finally:
        await cache.close()
        await raw.aclose()


async def test_refused_port_names_url_and_reason() -> None:
    cache = RedisCache("redis://127.0.0.1:1/0")
    try:
        with pytest.raises(ServiceUnavailableError) as caught:
            await cache.ping()
    finally:
        await cache.close()
    message = str(caught.value)
    assert "redis://127.0.0.1:1/0" in message
    assert "connection refused" in message
    assert "\n" not in message


async def test_every_operation_maps_connection_failures() -> None:
    cache = RedisCache("redis://127.0.0.1:1/0")
    try:
        with pytest.raises(ServiceUnavailableError, match="connection refused"):
            await cache.incr("n", ttl_s=1)
        with pytest.raises(ServiceUnavailableError, match="connection refused"):
            await cache.get_many(["a"])
    finally:
        await cache.close()


async def test_wrong_user_is_authentication_failed_and_password_hidden(redis_url: str) -> None:
    url = redis_url.replace("redis://", "redis://nobody:hunter2@")
    cache = RedisCache(url)
    try:
        with pytest.raises(ServiceUnavailableError, match="authentication failed") as caught:
            await cache.ping()
    finally:
        await cache.close()
    assert "hunter2" not in str(caught.value)
    assert "nobody:***@" in str(caught.value)


async def test_silent_server_is_timed_out() -> None:
    """A server that accepts the connection and never answers must not hang callers."""
    async with silent_tcp_server() as port:
        cache = RedisCache(f"redis://127.0.0.1:{port}/0", timeout_s=0.3)
        try:
            with pytest.raises(ServiceUnavailableError, match="timed out"):
                await cache.ping()
        finally:
            await cache.close()


def test_malformed_url_is_a_config_error() -> None:
    with pytest.raises(ConfigError, match="redis_url"):
        RedisCache("http://127.0.0.1:6379/0")
