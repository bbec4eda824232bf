"""CacheLatestSink on the real Redis (db 15): what the embedded cache does, over the wire."""

from __future__ import annotations

from collections.abc import AsyncIterator
from datetime import UTC, datetime

import pyarrow as pa
import pytest

from actors.stream.sinks import CacheLatestSink, latest, latest_key
from cluster.cache import RedisCache

pytestmark = pytest.mark.integration

WHEN = datetime(2026, 1, 2, 3, 4, 5, tzinfo=UTC)


@pytest.fixture
async def cache(redis_url: str) -> AsyncIterator[RedisCache]:
    cache = RedisCache(redis_url, prefix="datapunk:test:")
    yield cache
    await cache.close()


async def test_latest_rows_per_key_on_redis(cache: RedisCache) -> None:
    out = CacheLatestSink(
        cache, topology="clicks", name="latest", key_columns=["user", "page"], ttl_s=60
    )
    await out.open()
    rows = pa.table(
        {
            "user": ["a", "a", "b"] * 200,
            "page": ["/", "/", "/x"] * 200,
            "clicks": list(range(600)),
            "at": [WHEN] * 600,
        }
    )
    await out.write(1, rows)
    await out.write(1, rows)  # a replayed epoch stores the same values
    assert await latest(cache, "clicks", "latest", ["a", "/"]) == {
        "user": "a",
        "page": "/",
        "clicks": 598,
        "at": WHEN.isoformat(),
    }
    assert (await latest(cache, "clicks", "latest", ["b", "/x"]) or {})["clicks"] == 599
    ttl = await cache.ttl(latest_key("clicks", "latest", ["a", "/"]))
    assert ttl is not None and 0 < ttl <= 60
    await out.close()
