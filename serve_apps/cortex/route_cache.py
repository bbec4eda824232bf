"""Where a prediction goes: the gateway replica's cached view of aliases and canaries.

``RouteCache`` keeps a routing table ``{(model, alias): Route}`` read from the registry
(``all_aliases`` and ``canaries``: two queries, whatever the number of models) and the
version records (signatures) it routes to, so a request costs no database call. The
first request reads the table (concurrent first requests share that one read) and
starts a background task in the replica's event loop that refreshes it every
``refresh_s``, one refresh at a time, with or without traffic, so an alias move or a
canary rollback is served within about ``refresh_s``.

The swap is zero-downtime: when a refreshed table routes to versions the old one did not
(``versions_to_warm``), each is loaded into Cortex through ``warm`` *before* the new
table replaces the old, so no request meets a cold or unloadable version. A route whose
new version fails to warm keeps its old route until a later refresh succeeds; a refresh
that fails outright keeps the whole last good table (and logs why). A request resolves
its version once, so one in flight keeps the version it picked across a swap.

No Ray in here: the Serve handle comes in as the ``warm`` callable.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import time
from collections import OrderedDict
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from typing import Any, Protocol

from actors.cortex.routing import Route, pick, routes_from_registry, versions_to_warm

__all__ = ["RegistryReader", "RouteCache", "Target"]

logger = logging.getLogger(__name__)

RouteKey = tuple[str, str]
Warm = Callable[[str, int], Awaitable[Any]]
_RECORD_SLOTS = 512


class RegistryReader(Protocol):
    """What routing reads of the model registry (``ModelRegistry``)."""

    async def all_aliases(self) -> list[dict[str, Any]]: ...
    async def canaries(self, name: str | None = None) -> list[dict[str, Any]]: ...
    async def version(self, name: str, ref: int | str) -> dict[str, Any]: ...


@dataclass(frozen=True)
class Target:
    """Where one request goes: a version, how it was chosen, and its registry record."""

    name: str
    version: int
    alias: str | None
    canary: bool
    record: dict[str, Any]

    @property
    def signature(self) -> dict[str, Any]:
        signature: dict[str, Any] = self.record.get("signature") or {}
        return signature


class RouteCache:
    """The routing table of one gateway replica, refreshed in the background."""

    def __init__(
        self,
        registry: RegistryReader,
        warm: Warm,
        *,
        refresh_s: float,
        now: Callable[[], float] = time.monotonic,
        draw: Callable[[], float] = random.random,
        sleep: Callable[[float], Awaitable[Any]] = asyncio.sleep,
        record_slots: int = _RECORD_SLOTS,
    ) -> None:
        self._registry = registry
        self._warm = warm
        self.refresh_s = refresh_s
        self._now = now
        self._draw = draw
        self._sleep = sleep
        self._table: dict[RouteKey, Route] | None = None
        self.refreshed_at = float("-inf")
        self._refresher: asyncio.Task[None] | None = None
        self._lock = asyncio.Lock()
        # Version records never change once registered: an LRU of them is never stale.
        self._records: OrderedDict[tuple[str, int], dict[str, Any]] = OrderedDict()
        self._record_slots = record_slots
        self.refreshes = 0
        self.failed_refreshes = 0

    @property
    def table(self) -> Mapping[RouteKey, Route]:
        """The table requests route by now (empty before the first refresh)."""
        return dict(self._table or {})

    # ---- requests ----------------------------------------------------------------------

    async def resolve(
        self,
        name: str,
        *,
        alias: str | None = None,
        version: int | None = None,
        header: Callable[[str], str | None] = lambda _name: None,
    ) -> Target:
        """The version a request for ``name`` goes to: ``version`` as asked, else the
        alias's (its canary's for the canary's share of requests; ``header`` gives the
        request's value of the canary's sticky header, when it has one).

        ``NotFoundError`` (from the registry) for an unknown model, version or alias.
        """
        if version is not None:
            return Target(name, version, None, False, await self.record(name, version))
        alias = alias or "production"
        table = await self._current()
        route = table.get((name, alias))
        if route is None:
            # Not routed (yet): the registry says what it is, or names what exists.
            record = await self._registry.version(name, alias)
            self._remember(record)
            return Target(name, int(record["version"]), alias, False, record)
        sticky = route.canary.sticky_key if route.canary is not None else None
        key = header(sticky) if sticky else None
        chosen, is_canary = pick(route, key=key, draw=self._draw())
        return Target(name, chosen, alias, is_canary, await self.record(name, chosen))

    async def record(self, name: str, version: int) -> dict[str, Any]:
        """Version ``version``'s registry record, from the cache after the first read."""
        cached = self._records.get((name, version))
        if cached is not None:
            self._records.move_to_end((name, version))
            return cached
        record = await self._registry.version(name, version)
        self._remember(record)
        return record

    def _remember(self, record: dict[str, Any]) -> None:
        self._records[(str(record["name"]), int(record["version"]))] = record
        while len(self._records) > self._record_slots:
            self._records.popitem(last=False)

    async def _current(self) -> Mapping[RouteKey, Route]:
        if self._table is None:
            # The first requests wait for one read between them; a failure is theirs.
            async with self._lock:
                if self._table is None:
                    await self._refresh_locked()
        if self._refresher is None or self._refresher.done():
            self._refresher = asyncio.create_task(self._refresh_forever())
        return self._table or {}

    async def _refresh_forever(self) -> None:
        while True:
            await self._sleep(self.refresh_s)
            try:
                await self.refresh()
            except Exception as exc:
                self.failed_refreshes += 1
                logger.warning(
                    "cortex route refresh failed; keeping the last good routing table",
                    extra={"error": f"{type(exc).__name__}: {exc}"},
                )

    async def close(self) -> None:
        """Stop the background refresh (the table stays as it is)."""
        task, self._refresher = self._refresher, None
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task

    # ---- refresh -----------------------------------------------------------------------

    async def refresh(self) -> None:
        """Read the registry, warm what the new table adds, then switch to it.

        One refresh at a time (a second caller waits for the first). Raises what the
        registry raised; the old table stays.
        """
        async with self._lock:
            await self._refresh_locked()

    async def _refresh_locked(self) -> None:
        started = self._now()
        aliases = await self._registry.all_aliases()
        canaries = await self._registry.canaries()
        new = routes_from_registry(aliases, canaries)
        if self._table is None:
            # Nothing routed yet, so nothing to protect: versions load on first use.
            self._table = new
        else:
            old = self._table
            failed = await self._warm_all(versions_to_warm(old, new))
            self._table = {
                key: old[key] if key in old and _uses(route, failed) else route
                for key, route in new.items()
            }
        self.refreshed_at = started
        self.refreshes += 1

    async def _warm_all(self, versions: list[tuple[str, int]]) -> set[tuple[str, int]]:
        """Load each version into Cortex (and its record here); the ones that failed."""

        async def one(name: str, version: int) -> tuple[str, int] | None:
            try:
                await self.record(name, version)
                await self._warm(name, version)
            except Exception as exc:
                logger.warning(
                    "cortex could not warm a newly routed version; its route keeps the "
                    "version it had",
                    extra={"model": name, "version": version, "error": f"{exc}"},
                )
                return (name, version)
            return None

        results = await asyncio.gather(*(one(n, v) for n, v in versions))
        return {r for r in results if r is not None}


def _uses(route: Route, versions: set[tuple[str, int]]) -> bool:
    if not versions:
        return False
    used = {(route.name, route.version)}
    if route.canary is not None:
        used.add((route.name, route.canary.version))
    return bool(used & versions)
