"""Remember API-key verdicts briefly, so the gateway does not query the DB per request.

A verified key is trusted for ``ttl_s`` (never past its own expiry); a refusal is
remembered for ``min(ttl_s, 1 s)`` so a client retrying a bad key cannot hammer the
database, yet a key created a moment later works almost at once. Revocation
therefore takes effect within ``ttl_s`` on every replica (``invalidate`` makes it
immediate on this one). A key is never trusted past its ``expires_at``, which for a
rotated key is the end of its overlap: the rotation calls ``invalidate`` so this
replica re-reads the shortened expiry at once; others read it within ``ttl_s``.
Entries are keyed by digest: no token is held in memory. Concurrent misses for one
key share one lookup.
"""

from __future__ import annotations

import asyncio
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Generic, TypeVar

from cluster.errors import AuthenticationError
from cluster.security.keys import digest
from cluster.security.principal import Authenticator, Principal

DEFAULT_MAX_ENTRIES = 10_000
MAX_FAILURE_TTL_S = 1.0
V = TypeVar("V")


@dataclass(frozen=True, slots=True)
class _Refusal:
    message: str
    fields: dict[str, Any]


class TtlLru(Generic[V]):
    """A size-bounded map from digest to (value, deadline), oldest use evicted first."""

    def __init__(self, max_entries: int) -> None:
        self._entries: OrderedDict[str, tuple[V, float]] = OrderedDict()
        self._max = max_entries

    def get(self, key: str, now: float) -> V | None:
        entry = self._entries.get(key)
        if entry is None:
            return None
        if entry[1] <= now:
            del self._entries[key]
            return None
        self._entries.move_to_end(key)
        return entry[0]

    def put(self, key: str, value: V, deadline: float) -> None:
        self._entries[key] = (value, deadline)
        self._entries.move_to_end(key)
        while len(self._entries) > self._max:
            self._entries.popitem(last=False)

    def discard(self, key: str) -> None:
        self._entries.pop(key, None)

    def drop_where(self, predicate: Callable[[V], bool]) -> int:
        doomed = [key for key, (value, _) in self._entries.items() if predicate(value)]
        for key in doomed:
            del self._entries[key]
        return len(doomed)

    def clear(self) -> None:
        self._entries.clear()

    def __len__(self) -> int:
        return len(self._entries)


class CachedAuthenticator:
    """An ``Authenticator`` that caches another one's answers (see the module docstring).

    ``now`` is a monotonic clock in seconds (``time.monotonic`` in production) for the
    TTLs; ``utcnow``, when given, is the wall clock (aware UTC) used to stop trusting a
    key at its ``expires_at`` even inside the TTL. Without it an expired key may be
    accepted for up to ``ttl_s`` more, as a revoked one may.

    Successes and refusals are kept in separate LRUs, so a flood of bad tokens cannot
    evict the good keys. Errors other than ``AuthenticationError`` (database down) are
    never cached.
    """

    def __init__(
        self,
        store: Authenticator,
        ttl_s: float,
        now: Callable[[], float],
        max_entries: int = DEFAULT_MAX_ENTRIES,
        utcnow: Callable[[], datetime] | None = None,
    ) -> None:
        if ttl_s < 0 or max_entries < 1:
            raise ValueError(f"need ttl_s >= 0 and max_entries >= 1, got {ttl_s}, {max_entries}")
        self._store = store
        self._ttl = ttl_s
        self._failure_ttl = min(ttl_s, MAX_FAILURE_TTL_S)
        self._now = now
        self._utcnow = utcnow
        self._accepted: TtlLru[Principal] = TtlLru(max_entries)
        self._refused: TtlLru[_Refusal] = TtlLru(max_entries)
        self._inflight: dict[str, asyncio.Task[Principal]] = {}

    def __len__(self) -> int:
        return len(self._accepted) + len(self._refused)

    async def authenticate(self, token: str) -> Principal:
        """The caller ``token`` identifies, from the cache when fresh."""
        key = digest(token)
        now = self._now()
        principal = self._accepted.get(key, now)
        if principal is not None and not self._past_expiry(principal):
            return principal
        refusal = self._refused.get(key, now)
        if refusal is not None:
            raise AuthenticationError(refusal.message, **refusal.fields)
        task = self._inflight.get(key)
        if task is None:
            task = asyncio.ensure_future(self._lookup(key, token))
            self._inflight[key] = task
            task.add_done_callback(lambda done: self._settled(key, done))
        # shield: one caller giving up must not cancel the lookup the others await.
        return await asyncio.shield(task)

    def _settled(self, key: str, task: asyncio.Task[Principal]) -> None:
        if self._inflight.get(key) is task:
            del self._inflight[key]
        if not task.cancelled():
            task.exception()  # retrieved: every awaiting caller may have given up

    async def _lookup(self, key: str, token: str) -> Principal:
        try:
            principal = await self._store.authenticate(token)
        except AuthenticationError as exc:
            if self._failure_ttl > 0:
                refusal = _Refusal(exc.message, dict(exc.fields))
                self._refused.put(key, refusal, self._now() + self._failure_ttl)
            raise
        ttl = self._trust_for(principal)
        if ttl > 0:
            self._accepted.put(key, principal, self._now() + ttl)
        return principal

    def _past_expiry(self, principal: Principal) -> bool:
        # The monotonic deadline already stops at the expiry; the wall clock is asked
        # again because the two can drift apart (a suspended VM, an NTP step).
        return (
            principal.expires_at is not None
            and self._utcnow is not None
            and principal.expires_at <= self._utcnow()
        )

    def _trust_for(self, principal: Principal) -> float:
        """Seconds to trust ``principal``: ``ttl_s``, but never past the key's expiry."""
        if principal.expires_at is None or self._utcnow is None:
            return self._ttl
        left = (principal.expires_at - self._utcnow()).total_seconds()
        return min(self._ttl, left)

    def invalidate(self, key_id: str) -> int:
        """Forget every cached verdict about ``key_id`` (after revoking it here)."""
        return self._accepted.drop_where(lambda p: p.key_id == key_id) + self._refused.drop_where(
            lambda r: r.fields.get("key_id") == key_id
        )

    def clear(self) -> None:
        """Forget everything."""
        self._accepted.clear()
        self._refused.clear()
