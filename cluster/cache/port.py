"""The cache port: caching, rate-limit counters and latest values.

Two implementations pass the same contract (``tests/contracts/cache.py``):
``MemoryCache`` in-process for the embedded platform and ``RedisCache`` for a
cluster. Callers depend on ``Cache`` only and get one from ``build_cache``.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Protocol, runtime_checkable

DEFAULT_PREFIX = "datapunk:"
# Accepted on write and copied, so a caller reusing its buffer cannot change a stored value.
BytesLike = bytes | bytearray | memoryview


@runtime_checkable
class Cache(Protocol):
    """An async key/value store with expiry; keys are str, values are bytes.

    Every instance namespaces its keys with a prefix (``datapunk:`` by default), so
    two instances with different prefixes never see each other's keys. A ``ttl_s``
    is seconds until the key disappears: a positive finite float, or None for
    "never". Invalid ttls raise ``InvalidInputError``; non-bytes values raise
    ``TypeError``; an unreachable backend raises ``ServiceUnavailableError``.
    """

    async def get(self, key: str) -> bytes | None:
        """The value of ``key``, or None when it is missing or expired."""
        ...

    async def set(self, key: str, value: BytesLike, ttl_s: float | None = None) -> None:
        """Store ``value``; replaces any previous value *and* its ttl."""
        ...

    async def set_if_absent(self, key: str, value: BytesLike, ttl_s: float | None = None) -> bool:
        """Store ``value`` only when ``key`` does not exist; True when it was stored."""
        ...

    async def delete(self, key: str) -> bool:
        """Remove ``key``; True when it existed (and had not expired)."""
        ...

    async def incr(self, key: str, amount: int = 1, ttl_s: float | None = None) -> int:
        """Add ``amount`` to the integer counter at ``key`` and return the new value.

        A missing key starts at 0 and gets ``ttl_s``; an existing key keeps its ttl,
        which makes fixed-window rate limits one call. The stored value is the
        decimal bytes of the counter (``get`` returns ``b"3"``). A value that is not
        a 64-bit decimal integer, or a result that would overflow one, raises
        ``InvalidInputError``.
        """
        ...

    async def get_many(self, keys: Sequence[str]) -> list[bytes | None]:
        """The values of ``keys`` in the same order, None for each miss."""
        ...

    async def ttl(self, key: str) -> float | None:
        """Seconds until ``key`` expires; None when it is missing or never expires."""
        ...

    async def ping(self) -> None:
        """Return when the backend answers; raise ``ServiceUnavailableError`` otherwise."""
        ...

    async def close(self) -> None:
        """Release connections; safe to call twice."""
        ...
