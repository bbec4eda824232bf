"""Token buckets: the rate-limit port, its in-process implementation and its errors.

A bucket holds up to ``burst`` tokens and refills at ``rate_per_s``; a request takes
``cost`` tokens or is refused with the time until enough have refilled. The state of a
bucket is two numbers (tokens, time of the last update), so an idle bucket that would
be full again may simply be forgotten: a missing bucket *is* a full one. That makes
expiry safe and the Redis implementation (``cluster/cache/redis_buckets.py``) one
atomic script over a hash with a TTL.

``build_rate_limiter(settings)`` chooses: Redis when ``redis_url`` is set, else
``MemoryRateLimiter``. Both pass the same contract (``tests/contracts/ratelimit.py``).
"""

from __future__ import annotations

import math
import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Protocol, runtime_checkable

from cluster.errors import DatapunkError, InvalidInputError

if TYPE_CHECKING:
    from cluster.settings import Settings

RATE_LIMIT_PREFIX = "datapunk:ratelimit:"


@dataclass(frozen=True, slots=True)
class BucketLimit:
    """A bucket's shape: ``burst`` tokens at most, refilled at ``rate_per_s``."""

    rate_per_s: float
    burst: int

    def __post_init__(self) -> None:
        rate = self.rate_per_s
        if isinstance(rate, bool) or not isinstance(rate, int | float) or not math.isfinite(rate):
            raise InvalidInputError(field="rate_per_s", value=rate, allowed="a finite number > 0")
        if rate <= 0:
            raise InvalidInputError(field="rate_per_s", value=rate, allowed="a number > 0")
        if isinstance(self.burst, bool) or not isinstance(self.burst, int) or self.burst < 1:
            raise InvalidInputError(field="burst", value=self.burst, allowed="an int >= 1")

    @property
    def refill_s(self) -> float:
        """Seconds an empty bucket takes to fill: after that, its state may be dropped."""
        return self.burst / self.rate_per_s

    def describe(self) -> str:
        return f"{self.rate_per_s:g}/s, burst {self.burst}"


@dataclass(frozen=True, slots=True)
class Decision:
    """The answer for one request: allowed or not, what is left, and when to retry."""

    allowed: bool
    remaining: float
    retry_after_s: float

    @property
    def retry_after_header(self) -> str:
        """``Retry-After`` in whole seconds, rounded up (never 0 for a refusal)."""
        return str(max(1, math.ceil(self.retry_after_s)))


@runtime_checkable
class RateLimiter(Protocol):
    """Token buckets keyed by str; each call is atomic for its bucket.

    ``cost`` must be > 0 and at most ``limit.burst`` (a bigger cost could never be
    granted); ``InvalidInputError`` otherwise. An unreachable backend raises
    ``ServiceUnavailableError``.
    """

    async def acquire(self, key: str, limit: BucketLimit, cost: float = 1.0) -> Decision:
        """Take ``cost`` tokens from bucket ``key`` if it holds them."""
        ...

    async def peek(self, key: str, limit: BucketLimit) -> float:
        """Tokens bucket ``key`` holds now, taking nothing."""
        ...

    async def close(self) -> None:
        """Release connections; safe to call twice."""
        ...


def check_cost(cost: float, limit: BucketLimit) -> None:
    """Refuse costs that are not positive or that no full bucket could ever grant."""
    if isinstance(cost, bool) or not isinstance(cost, int | float) or not math.isfinite(cost):
        raise InvalidInputError(field="cost", value=cost, allowed="a finite number > 0")
    if cost <= 0 or cost > limit.burst:
        raise InvalidInputError(
            field="cost", value=cost, allowed=f"a number > 0 and <= the burst ({limit.burst})"
        )


def refill(tokens: float, elapsed_s: float, limit: BucketLimit) -> float:
    """Tokens after ``elapsed_s`` of refilling (a clock that went back refills nothing)."""
    return min(float(limit.burst), tokens + max(0.0, elapsed_s) * limit.rate_per_s)


# Refills are sums of float products: a token due at exactly this moment may read as
# 0.9999999; without the tolerance a client asking at the precise rate gets refused.
TOKEN_EPSILON = 1e-9


def take(tokens: float, cost: float, limit: BucketLimit) -> tuple[Decision, float]:
    """The decision for ``cost`` from a bucket holding ``tokens``, and the tokens left."""
    if tokens + TOKEN_EPSILON >= cost:
        left = max(0.0, tokens - cost)
        return Decision(True, left, 0.0), left
    return Decision(False, tokens, (cost - tokens) / limit.rate_per_s), tokens


class MemoryRateLimiter:
    """Token buckets in this process, on an injected monotonic clock.

    Safe for many tasks on one event loop (no await between read and write). Each
    process (each gateway replica) has its own buckets, so with N replicas a client
    may get up to N times the rate: configure Redis for a shared limit. Buckets idle
    long enough to be full are dropped; an LRU bound caps memory for the rest.
    """

    def __init__(
        self, now: Callable[[], float] = time.monotonic, max_buckets: int = 100_000
    ) -> None:
        if isinstance(max_buckets, bool) or not isinstance(max_buckets, int) or max_buckets < 1:
            raise InvalidInputError(field="max_buckets", value=max_buckets, allowed="an int >= 1")
        self._now = now
        self._max = max_buckets
        self._buckets: OrderedDict[str, tuple[float, float]] = OrderedDict()

    def __len__(self) -> int:
        return len(self._buckets)

    async def acquire(self, key: str, limit: BucketLimit, cost: float = 1.0) -> Decision:
        check_cost(cost, limit)
        now = self._now()
        decision, left = take(self._tokens(key, limit, now), cost, limit)
        self._buckets[key] = (left, now)
        self._buckets.move_to_end(key)
        while len(self._buckets) > self._max:
            self._buckets.popitem(last=False)
        return decision

    async def peek(self, key: str, limit: BucketLimit) -> float:
        return self._tokens(key, limit, self._now())

    async def close(self) -> None:
        self._buckets.clear()

    def _tokens(self, key: str, limit: BucketLimit, now: float) -> float:
        state = self._buckets.get(key)
        if state is None:
            return float(limit.burst)
        tokens, updated = state
        if now - updated >= limit.refill_s:
            del self._buckets[key]  # full again: a missing bucket means the same
            return float(limit.burst)
        return refill(tokens, now - updated, limit)


def build_rate_limiter(settings: Settings) -> RateLimiter:
    """Redis buckets when ``redis_url`` is set (shared by every replica), else in-process.

    Constructing either opens no connection.
    """
    url = settings.secret("redis_url")
    if url is None:
        return MemoryRateLimiter()
    from cluster.cache.redis_buckets import RedisRateLimiter

    return RedisRateLimiter(url)


class RateLimitedError(DatapunkError):
    """A caller used up a bucket: 429 with ``Retry-After``."""

    code = "rate_limited"
    http_status = 429

    def __init__(self, *, who: str, route_class: str, limit: BucketLimit, retry_after_s: float):
        seconds = max(1, math.ceil(retry_after_s))
        super().__init__(
            f"rate limit exceeded for {who} on {route_class!r} requests "
            f"({limit.describe()}); retry after {seconds} s",
            who=who,
            route_class=route_class,
            retry_after_s=seconds,
        )

    @property
    def headers(self) -> dict[str, str]:
        """The response headers a 429 carries (kept in ``fields``, so it survives pickling)."""
        return {"Retry-After": str(self.fields["retry_after_s"])}


class PayloadTooLargeError(DatapunkError):
    """A request body over the configured limit: 413."""

    code = "payload_too_large"
    http_status = 413

    def __init__(self, *, limit_bytes: int, setting: str, fix: str) -> None:
        super().__init__(
            f"request body over {limit_bytes} bytes ({setting}); {fix}",
            limit_bytes=limit_bytes,
            setting=setting,
        )
