"""The cache port (caching, rate limits, latest values) and its two implementations.

``build_cache(settings)`` is the only place that chooses: Redis when
``redis_url`` is set, else the in-process ``MemoryCache``. Importing this package
connects to nothing.
"""

from __future__ import annotations

from cluster.cache.memory import MemoryCache
from cluster.cache.port import DEFAULT_PREFIX, BytesLike, Cache
from cluster.cache.redis import RedisCache
from cluster.settings import Settings

__all__ = ["DEFAULT_PREFIX", "BytesLike", "Cache", "MemoryCache", "RedisCache", "build_cache"]


def build_cache(settings: Settings, *, prefix: str = DEFAULT_PREFIX) -> Cache:
    """The cache the settings ask for; constructing it opens no connection.

    Call ``ping()`` on the result to fail fast at startup when Redis is configured
    but unreachable.
    """
    url = settings.secret("redis_url")
    if url is None:
        return MemoryCache(prefix=prefix)
    return RedisCache(url, prefix=prefix)
