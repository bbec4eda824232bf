"""In-process cache for the embedded platform: same contract as Redis, no server."""

from __future__ import annotations

import time
from collections import OrderedDict
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from cluster.cache._values import (
    INT64_MAX,
    INT64_MIN,
    as_bytes,
    check_amount,
    check_ttl,
    counter_overflow,
    parse_counter,
)
from cluster.cache.port import DEFAULT_PREFIX, BytesLike
from cluster.errors import InvalidInputError


@dataclass(slots=True)
class _Entry:
    value: bytes
    expires_at: float | None  # on the injected clock; None = never


class MemoryCache:
    """A bounded LRU dict with expiry on an injected clock.

    Safe for many tasks on one event loop: no method awaits between reading and
    writing the store, so each call is atomic with respect to other tasks (that is
    what makes ``incr`` and ``set_if_absent`` race-free). Not thread-safe; each
    process (and each Ray actor) has its own store.

    Expired entries are dropped when touched; the LRU bound caps memory for the
    rest, evicting the least recently read or written key first.
    """

    def __init__(
        self,
        now: Callable[[], float] = time.monotonic,
        max_entries: int = 100_000,
        prefix: str = DEFAULT_PREFIX,
    ) -> None:
        if isinstance(max_entries, bool) or not isinstance(max_entries, int) or max_entries < 1:
            raise InvalidInputError(field="max_entries", value=max_entries, allowed="an int >= 1")
        self._now = now
        self._max_entries = max_entries
        self._prefix = prefix
        self._store: OrderedDict[str, _Entry] = OrderedDict()

    def __len__(self) -> int:
        """Entries held, including expired ones not yet touched."""
        return len(self._store)

    @property
    def prefix(self) -> str:
        return self._prefix

    async def get(self, key: str) -> bytes | None:
        entry = self._live(self._prefix + key)
        return None if entry is None else entry.value

    async def set(self, key: str, value: BytesLike, ttl_s: float | None = None) -> None:
        check_ttl(ttl_s)
        self._put(self._prefix + key, _Entry(as_bytes(value), self._expiry(ttl_s)))

    async def set_if_absent(self, key: str, value: BytesLike, ttl_s: float | None = None) -> bool:
        check_ttl(ttl_s)
        data = as_bytes(value)
        full = self._prefix + key
        if self._live(full) is not None:
            return False
        self._put(full, _Entry(data, self._expiry(ttl_s)))
        return True

    async def delete(self, key: str) -> bool:
        full = self._prefix + key
        existed = self._live(full) is not None
        self._store.pop(full, None)
        return existed

    async def incr(self, key: str, amount: int = 1, ttl_s: float | None = None) -> int:
        check_amount(amount)
        check_ttl(ttl_s)
        full = self._prefix + key
        entry = self._live(full)
        if entry is None:
            entry = _Entry(b"0", self._expiry(ttl_s))
        number = parse_counter(key, entry.value) + amount
        if not INT64_MIN <= number <= INT64_MAX:
            raise counter_overflow(key, amount)
        # The existing expiry is kept on purpose: a rate-limit window must not slide.
        self._put(full, _Entry(str(number).encode(), entry.expires_at))
        return number

    async def get_many(self, keys: Sequence[str]) -> list[bytes | None]:
        # Synchronous lookups: the whole batch is one consistent read, like MGET.
        entries = [self._live(self._prefix + key) for key in keys]
        return [None if entry is None else entry.value for entry in entries]

    async def ttl(self, key: str) -> float | None:
        entry = self._live(self._prefix + key)
        if entry is None or entry.expires_at is None:
            return None
        return entry.expires_at - self._now()

    async def ping(self) -> None:
        """Always answers: the store lives in this process."""

    async def close(self) -> None:
        """Drop every entry; the instance stays usable, like a reconnecting client."""
        self._store.clear()

    def _expiry(self, ttl_s: float | None) -> float | None:
        return None if ttl_s is None else self._now() + ttl_s

    def _live(self, full_key: str) -> _Entry | None:
        entry = self._store.get(full_key)
        if entry is None:
            return None
        if entry.expires_at is not None and self._now() >= entry.expires_at:
            del self._store[full_key]
            return None
        self._store.move_to_end(full_key)
        return entry

    def _put(self, full_key: str, entry: _Entry) -> None:
        self._store[full_key] = entry
        self._store.move_to_end(full_key)
        while len(self._store) > self._max_entries:
            self._store.popitem(last=False)
