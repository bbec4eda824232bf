"""Token buckets in Redis: one atomic Lua script per request.

The script reads the bucket's hash (``tokens``, ``ts``), refills it by the time passed
on Redis's own clock (``TIME``, so every gateway replica agrees whatever its own clock
says), takes the cost or not, writes the hash back and sets its expiry to the refill
time: a bucket that disappears was full anyway. Reading and writing in one script is
what makes concurrent requests from many replicas exact: no request sees a stale count.

The script is sent once and then run by its SHA-1 (``EVALSHA``); a server that does not
know it (restarted, ``SCRIPT FLUSH``) answers ``NOSCRIPT`` and the call falls back to
``EVAL``, which also caches the script again.
"""

from __future__ import annotations

import hashlib

from redis import exceptions as redis_errors

from cluster.cache.redis import RedisCache
from cluster.security.ratelimit import (
    RATE_LIMIT_PREFIX,
    BucketLimit,
    Decision,
    check_cost,
)

# KEYS[1] bucket; ARGV rate_per_s, burst, cost (0 = peek: report, take nothing).
# Floats go back as strings: Redis turns a Lua number reply into an integer. The 1e-9
# is ratelimit.TOKEN_EPSILON (a token due now must not read as 0.9999999).
BUCKET_SCRIPT = """
local rate = tonumber(ARGV[1])
local burst = tonumber(ARGV[2])
local cost = tonumber(ARGV[3])
local clock = redis.call('TIME')
local now = tonumber(clock[1]) + tonumber(clock[2]) / 1000000
local state = redis.call('HMGET', KEYS[1], 'tokens', 'ts')
local tokens = tonumber(state[1])
local ts = tonumber(state[2])
if tokens == nil or ts == nil then
  tokens = burst
  ts = now
end
local elapsed = now - ts
if elapsed < 0 then elapsed = 0 end
tokens = math.min(burst, tokens + elapsed * rate)
if cost == 0 then
  return {1, tostring(tokens), '0'}
end
local allowed = 0
local retry = 0
if tokens + 1e-9 >= cost then
  tokens = math.max(0, tokens - cost)
  allowed = 1
else
  retry = (cost - tokens) / rate
end
redis.call('HSET', KEYS[1], 'tokens', tostring(tokens), 'ts', tostring(now))
redis.call('PEXPIRE', KEYS[1], math.ceil(burst / rate * 1000) + 1000)
return {allowed, tostring(tokens), tostring(retry)}
"""
BUCKET_SCRIPT_SHA = hashlib.sha1(BUCKET_SCRIPT.encode(), usedforsecurity=False).hexdigest()


class RedisRateLimiter:
    """The rate-limit port on Redis, sharing ``RedisCache``'s pool and error mapping.

    Keys are ``datapunk:ratelimit:<key>``; nothing connects until the first call.
    """

    def __init__(self, url: str, prefix: str = RATE_LIMIT_PREFIX, *, timeout_s: float = 2.0):
        self._redis = RedisCache(url, prefix=prefix, timeout_s=timeout_s)
        self._prefix = prefix

    async def acquire(self, key: str, limit: BucketLimit, cost: float = 1.0) -> Decision:
        check_cost(cost, limit)
        allowed, tokens, retry = await self._run(key, limit, cost)
        return Decision(bool(int(allowed)), float(tokens), float(retry))

    async def peek(self, key: str, limit: BucketLimit) -> float:
        _, tokens, _ = await self._run(key, limit, 0)
        return float(tokens)

    async def close(self) -> None:
        await self._redis.close()

    async def _run(self, key: str, limit: BucketLimit, cost: float) -> list[bytes]:
        client = self._redis._client  # one pool for cache and buckets
        args = (repr(float(limit.rate_per_s)), str(limit.burst), repr(float(cost)))
        full = self._prefix + key
        try:
            try:
                reply = await client.evalsha(BUCKET_SCRIPT_SHA, 1, full, *args)
            except redis_errors.NoScriptError:
                reply = await client.eval(BUCKET_SCRIPT, 1, full, *args)
        except (
            redis_errors.ConnectionError,
            redis_errors.TimeoutError,
            redis_errors.ReadOnlyError,
            redis_errors.OutOfMemoryError,
            redis_errors.NoPermissionError,
            OSError,
        ) as exc:
            raise self._redis.unavailable(exc) from exc
        return list(reply)
