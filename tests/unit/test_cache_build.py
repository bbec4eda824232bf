"""build_cache: settings alone choose the implementation, and nothing connects."""

from __future__ import annotations

from pathlib import Path

from cluster.cache import MemoryCache, RedisCache, build_cache
from cluster.settings import load_settings


async def test_no_redis_url_builds_the_memory_cache(tmp_path: Path) -> None:
    cache = build_cache(load_settings(data_dir=tmp_path))
    assert isinstance(cache, MemoryCache)
    assert cache.prefix == "datapunk:"
    await cache.ping()


async def test_redis_url_builds_redis_without_connecting(tmp_path: Path) -> None:
    # Port 1 refuses connections: building must still succeed, because the
    # composition root builds adapters before anyone decides to ping them.
    settings = load_settings(data_dir=tmp_path, redis_url="redis://127.0.0.1:1/0")
    cache = build_cache(settings, prefix="svc:")
    assert isinstance(cache, RedisCache)
    assert cache.prefix == "svc:"
    await cache.close()
