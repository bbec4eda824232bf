"""The Lake API over the actor pool: the same methods as ``LakeService``, spread across
the pool's actors round-robin. Arrow results come back through Ray's object store.

Every actor can serve every call: writes to one table from several actors are safe,
because commits are optimistic and retried in the core, never a lost update.
"""

from __future__ import annotations

import functools
import itertools
from collections.abc import Awaitable, Callable
from typing import Any, cast

import ray

from actors.lake.service import LAKE_METHODS, LakeService
from cluster.errors import DatapunkError, ServiceUnavailableError
from cluster.logging import current_request_id
from cluster.pools import actor_name
from cluster.settings import Settings

READ_METHODS = frozenset({"list_tables", "list_namespaces", "describe", "scan", "sql", "history"})


class RayLake:
    """Forwards ``LakeService`` calls to the ``lake-<i>`` actors of the platform's namespace."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self._size = settings.pools.lake
        self._next = itertools.count()
        self._handles: dict[int, Any] = {}

    def _handle(self, index: int) -> Any:
        if index not in self._handles:
            name = actor_name("lake", index)
            try:
                self._handles[index] = ray.get_actor(name, self.settings.ray.namespace)
            except ValueError:
                raise ServiceUnavailableError(
                    service="lake pool",
                    target=f"actor {name}",
                    reason="actor not found",
                    fix="run `datapunk up` to start the actor pools",
                ) from None
        return self._handles[index]

    async def call(self, method: str, *args: Any, **kwargs: Any) -> Any:
        """Run ``method`` on the next actor; its typed errors surface unchanged.

        A read that meets a dead or restarting actor moves on to the next one; a write
        does not, since it may have committed before the actor died (the caller decides).
        """
        attempts = self._size if method in READ_METHODS else 1
        for attempt in range(1, attempts + 1):
            try:
                return await self._call_once(method, *args, **kwargs)
            except ServiceUnavailableError:
                if attempt == attempts:
                    raise
        raise AssertionError("unreachable")

    async def _call_once(self, method: str, *args: Any, **kwargs: Any) -> Any:
        if self._size < 1:
            raise ServiceUnavailableError(
                service="lake pool",
                target="pools.lake=0",
                reason="no Lake actors configured",
                fix="set pools.lake >= 1 (DATAPUNK_POOLS__LAKE)",
            )
        index = next(self._next) % self._size
        try:
            return await self._handle(index).call.remote(
                method, current_request_id(), *args, **kwargs
            )
        except ray.exceptions.RayTaskError as exc:
            if isinstance(exc.cause, DatapunkError):
                raise exc.cause from None
            raise
        except ray.exceptions.RayActorError:
            self._handles.pop(index, None)  # restarted actors get a fresh handle next time
            raise ServiceUnavailableError(
                service="lake pool",
                target=f"actor {actor_name('lake', index)}",
                reason="actor died during the call",
                fix="retry; the pool restarts actors",
            ) from None

    def __getattr__(self, method: str) -> Callable[..., Awaitable[Any]]:
        if method not in LAKE_METHODS:
            raise AttributeError(method)
        return functools.partial(self.call, method)

    def as_service(self) -> LakeService:
        """Typed view for callers written against ``LakeService``'s methods."""
        return cast(LakeService, self)


def to_ray_dataset(
    settings: Settings, table: str, snapshot_id: int | None = None, **read_options: Any
) -> ray.data.Dataset:
    """A Lake table at a snapshot (latest by default) as a Ray Dataset, for distributed work.

    Ray Data reads the Iceberg table itself (``read_iceberg``) through the same catalog,
    so the data files stream to Ray's workers without passing through a Lake actor.
    """
    from actors.lake.catalog import CATALOG_NAME, catalog_uri, warehouse_uri
    from actors.lake.specs import parse_table_name

    parsed = parse_table_name(table)
    return ray.data.read_iceberg(
        table_identifier=parsed.full,
        snapshot_id=snapshot_id,
        catalog_kwargs={
            "name": CATALOG_NAME,
            "type": "sql",
            "uri": catalog_uri(settings),
            "warehouse": warehouse_uri(settings),
        },
        **read_options,
    )
