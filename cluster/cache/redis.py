"""Redis implementation of the cache port, on ``redis.asyncio`` with a bounded pool."""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from typing import cast

from redis import exceptions as redis_errors
from redis.asyncio import BlockingConnectionPool, Redis
from redis.asyncio.retry import Retry
from redis.backoff import ExponentialBackoff

from cluster.cache._values import (
    as_bytes,
    check_amount,
    check_ttl,
    counter_overflow,
    not_a_counter,
    ttl_ms,
)
from cluster.cache.port import DEFAULT_PREFIX, BytesLike
from cluster.errors import ConfigError, ServiceUnavailableError
from cluster.net_reasons import (
    CONNECTION_REFUSED,
    HOST_NOT_FOUND,
    TIMED_OUT,
    describe_network_error,
    first_line,
)
from cluster.settings import redact_url

AUTH_FAILED = "authentication failed"
POOL_EXHAUSTED = "no free connection in the pool"

_FIXES: dict[str, str] = {
    CONNECTION_REFUSED: "start Redis there, "
    "or unset DATAPUNK_REDIS_URL to use the in-process cache",
    AUTH_FAILED: "put the right user and password in DATAPUNK_REDIS_URL "
    "(redis://user:password@host:6379/0)",
    TIMED_OUT: "check host, port and firewall in DATAPUNK_REDIS_URL; the server did not answer",
    HOST_NOT_FOUND: "correct the host name in DATAPUNK_REDIS_URL",
    POOL_EXHAUSTED: "lower concurrency or raise RedisCache(max_connections=...)",
}
_DEFAULT_FIX = "check that Redis is running and that DATAPUNK_REDIS_URL points at it"


class RedisCache:
    """The cache port on Redis; every key is stored as ``prefix + key``.

    Nothing connects in the constructor: the pool opens connections on first use,
    so building one at a composition root is free and ``ping`` is the health check.
    Connection failures raise ``ServiceUnavailableError`` with the URL redacted.
    """

    def __init__(
        self,
        url: str,
        prefix: str = DEFAULT_PREFIX,
        *,
        timeout_s: float = 2.0,
        max_connections: int = 32,
    ) -> None:
        self._target = redact_url(url)
        self._prefix = prefix
        try:
            # Blocking pool: a burst of callers waits for a free connection instead of
            # opening unbounded sockets (or failing with "Too many connections").
            pool = BlockingConnectionPool.from_url(
                url,
                max_connections=max_connections,
                timeout=timeout_s,
                socket_timeout=timeout_s,
                socket_connect_timeout=timeout_s,
                # One quick retry survives a pooled socket closed by a Redis restart,
                # without hiding a down server behind seconds of backoff.
                retry=Retry(ExponentialBackoff(cap=0.2, base=0.05), retries=1),
                health_check_interval=30,
            )
        except ValueError as exc:
            raise ConfigError(key="redis_url", value=self._target, allowed=str(exc)) from None
        self._client: Redis = Redis.from_pool(pool)

    @property
    def prefix(self) -> str:
        return self._prefix

    async def get(self, key: str) -> bytes | None:
        with self._errors():
            value = await self._client.get(self._prefix + key)
        # decode_responses stays False (the default), so replies are bytes, never str.
        return cast("bytes | None", value)

    async def set(self, key: str, value: BytesLike, ttl_s: float | None = None) -> None:
        check_ttl(ttl_s)
        data = as_bytes(value)
        px = None if ttl_s is None else ttl_ms(ttl_s)
        with self._errors():
            await self._client.set(self._prefix + key, data, px=px)

    async def set_if_absent(self, key: str, value: BytesLike, ttl_s: float | None = None) -> bool:
        check_ttl(ttl_s)
        data = as_bytes(value)
        px = None if ttl_s is None else ttl_ms(ttl_s)
        with self._errors():
            stored = await self._client.set(self._prefix + key, data, px=px, nx=True)
        return bool(stored)

    async def delete(self, key: str) -> bool:
        with self._errors():
            removed: int = await self._client.delete(self._prefix + key)
        return removed == 1

    async def incr(self, key: str, amount: int = 1, ttl_s: float | None = None) -> int:
        check_amount(amount)
        check_ttl(ttl_s)
        full = self._prefix + key
        with self._errors(), self._counter_errors(key, amount):
            if ttl_s is None:
                return int(await self._client.incrby(full, amount))
            # MULTI/EXEC makes create-with-ttl and increment one step: SET NX only
            # succeeds for a new key, so an existing window keeps its expiry.
            async with self._client.pipeline(transaction=True) as pipe:
                pipe.set(full, b"0", px=ttl_ms(ttl_s), nx=True)
                pipe.incrby(full, amount)
                _, number = await pipe.execute()
            return int(number)

    async def get_many(self, keys: Sequence[str]) -> list[bytes | None]:
        if not keys:
            return []  # MGET with no keys is a Redis error, not an empty answer
        with self._errors():
            values = await self._client.mget([self._prefix + key for key in keys])
        return cast("list[bytes | None]", values)

    async def ttl(self, key: str) -> float | None:
        with self._errors():
            remaining_ms: int = await self._client.pttl(self._prefix + key)
        # -2: no such key, -1: no expiry; both mean "no ttl" in the port.
        return None if remaining_ms < 0 else remaining_ms / 1000

    async def ping(self) -> None:
        with self._errors():
            await self._client.ping()

    async def close(self) -> None:
        # from_pool hands the pool to the client, so this closes its sockets too.
        await self._client.aclose()

    @contextmanager
    def _errors(self) -> Iterator[None]:
        try:
            yield
        except (
            redis_errors.ConnectionError,
            redis_errors.TimeoutError,
            redis_errors.ReadOnlyError,
            redis_errors.OutOfMemoryError,
            redis_errors.NoPermissionError,
            OSError,
        ) as exc:
            raise self.unavailable(exc) from exc

    @contextmanager
    def _counter_errors(self, key: str, amount: int) -> Iterator[None]:
        try:
            yield
        except redis_errors.ResponseError as exc:
            text = str(exc).lower()
            if "not an integer" in text:
                raise not_a_counter(key) from None
            if "overflow" in text:
                raise counter_overflow(key, amount) from None
            raise

    def unavailable(self, exc: BaseException) -> ServiceUnavailableError:
        """``exc`` as the typed error that names this Redis (password hidden)."""
        reason = _reason(exc)
        return ServiceUnavailableError(
            service="Redis",
            target=self._target,
            reason=reason,
            fix=_FIXES.get(reason, _DEFAULT_FIX),
        )


def _reason(exc: BaseException) -> str:
    if isinstance(exc, redis_errors.AuthenticationError | redis_errors.AuthorizationError):
        return AUTH_FAILED
    if isinstance(exc, redis_errors.NoPermissionError):
        return "permission denied for this user (Redis ACL)"
    if isinstance(exc, redis_errors.ReadOnlyError):
        return "server is a read-only replica"
    if isinstance(exc, redis_errors.OutOfMemoryError):
        return "server is out of memory (maxmemory reached)"
    if (
        isinstance(exc, redis_errors.ConnectionError)
        and "no connection available" in str(exc).lower()
    ):
        return POOL_EXHAUSTED
    network = describe_network_error(exc)
    if network is not None:
        return network
    if isinstance(exc, redis_errors.TimeoutError):
        return TIMED_OUT
    return first_line(exc)
