"""Deploy, list, inspect, stop and feed topologies on a running platform.

Used by ``datapunk stream ...`` and the gateway's ``/api/v1/streams`` routes, from a
process already connected to the platform's Ray cluster. The platform DB keeps what
is deployed (``stream_topologies``) and the checkpoints; Ray holds the live actors:
``stream-<name>`` (coordinator), ``stream-<name>-p<i>`` (partitions) and, without
RabbitMQ, ``stream-queue-<queue>`` (the in-cluster queue, kept across redeploys so
events already accepted survive a ``stop``).
"""

from __future__ import annotations

import asyncio
import time
from typing import Any

import ray

from actors.stream.build import EventPublisher, event_publisher
from actors.stream.coordinator import StreamCoordinator, coordinator_name
from actors.stream.partition_actor import partition_actor_name
from actors.stream.topology import QueueSource, Topology
from cluster.db.engine import create_engine
from cluster.db.migrate import ensure_schema
from cluster.db.stream_store import SqlCheckpointStore, TopologyStore
from cluster.errors import InvalidInputError, NotFoundError, PlatformStateError
from cluster.settings import Settings, export_settings

_MAX_PARTITIONS = 64
_SPEC_TTL_S = 5.0


class StreamControl:
    """The stream operations over one platform (settings) and its DB."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self._engine: Any = None
        self._topologies: TopologyStore | None = None
        self._checkpoints: SqlCheckpointStore | None = None
        self._publisher: EventPublisher | None = None
        self._specs: dict[str, tuple[float, Topology]] = {}

    async def _stores(self) -> tuple[TopologyStore, SqlCheckpointStore]:
        if self._topologies is None or self._checkpoints is None:
            await ensure_schema(self.settings)
            self._engine = create_engine(self.settings)
            self._topologies = TopologyStore.from_engine(self._engine)
            self._checkpoints = SqlCheckpointStore.from_engine(self._engine)
        return self._topologies, self._checkpoints

    async def close(self) -> None:
        if self._publisher is not None:
            await self._publisher.close()
        if self._engine is not None:
            await self._engine.dispose()

    # -- lifecycle ------------------------------------------------------------------------

    async def deploy(
        self,
        topology: Topology,
        *,
        fresh: bool = False,
        created_by: str | None = None,
        timeout_s: float = 60.0,
    ) -> dict[str, Any]:
        """Start (or restart with a new spec) ``topology``; resumes from its checkpoint."""
        topologies, checkpoints = await self._stores()
        await self._halt(topology.name)
        if fresh:
            await checkpoints.drop(topology.name)
        spec = topology.model_dump(mode="json", by_alias=True)
        await topologies.put(topology.name, spec, created_by)
        StreamCoordinator.options(  # type: ignore[attr-defined]
            name=coordinator_name(topology.name),
            namespace=self.settings.ray.namespace,
            lifetime="detached",
            get_if_exists=True,
            num_cpus=topology.actor_cpus,
        ).remote(spec, export_settings(self.settings))
        self._specs.pop(topology.name, None)
        status = await self._wait_started(topology.name, timeout_s)
        await topologies.set_status(topology.name, "running")
        return status

    async def stop(self, name: str) -> dict[str, Any]:
        """Commit the open epoch, stop the actors, keep checkpoints (deploy resumes)."""
        topologies, _ = await self._stores()
        if await topologies.get(name) is None:
            raise NotFoundError(kind="stream topology", name=name)
        status = await self._halt(name)
        await topologies.set_status(name, "stopped")
        return status or {"name": name, "state": "stopped"}

    async def _halt(self, name: str) -> dict[str, Any] | None:
        handle = self._coordinator(name)
        status = None
        if handle is not None:
            try:
                status = await handle.stop.remote()
            except ray.exceptions.RayActorError:
                status = None
            ray.kill(handle, no_restart=True)
        for index in range(_MAX_PARTITIONS):
            actor = self._actor(partition_actor_name(name, index))
            if actor is None:
                break
            ray.kill(actor, no_restart=True)
        await self._wait_gone(name)
        return status

    async def _wait_gone(self, name: str, timeout_s: float = 30.0) -> None:
        deadline = time.monotonic() + timeout_s
        names = [coordinator_name(name), partition_actor_name(name, 0)]
        while any(self._actor(n) is not None for n in names):
            if time.monotonic() > deadline:
                raise PlatformStateError(f"stream {name}'s actors did not stop in {timeout_s}s")
            await asyncio.sleep(0.1)

    async def _wait_started(self, name: str, timeout_s: float) -> dict[str, Any]:
        deadline = time.monotonic() + timeout_s
        status: dict[str, Any] = {}
        while time.monotonic() < deadline:
            handle = self._coordinator(name)
            if handle is not None:
                try:
                    status = await handle.status.remote()
                except ray.exceptions.RayActorError as exc:
                    raise PlatformStateError(
                        f"stream {name}'s coordinator could not start: {_first_line(exc)}"
                    ) from None
                if status["state"] in ("running", "finished"):
                    return dict(status)
            await asyncio.sleep(0.1)
        raise PlatformStateError(
            f"stream {name} did not start in {timeout_s}s (state {status.get('state')}, "
            f"error {status.get('error')}); see `datapunk stream status {name}`"
        )

    # -- reads ----------------------------------------------------------------------------

    async def ls(self) -> list[dict[str, Any]]:
        topologies, _ = await self._stores()
        rows = []
        for record in await topologies.list():
            live = await self._live(record["name"])
            rows.append({**record, "state": live.get("state", record["status"]), "live": live})
        return rows

    async def status(self, name: str) -> dict[str, Any]:
        topologies, _ = await self._stores()
        record = await topologies.get(name)
        if record is None:
            raise NotFoundError(kind="stream topology", name=name)
        live = await self._live(name)
        queue = await self._queue_stats(name)
        return {
            **record,
            "state": live.get("state", record["status"]),
            "live": live,
            "queue": queue,
        }

    async def tail(
        self, name: str, after: int = 0, outputs: list[str] | None = None, timeout_s: float = 0.0
    ) -> dict[str, Any]:
        handle = self._coordinator(name)
        if handle is None:
            raise NotFoundError(kind="running stream", name=name)
        return dict(await handle.tail.remote(after, outputs, timeout_s))

    async def topology(self, name: str) -> Topology:
        """The deployed spec of ``name`` (cached a few seconds for the ingest path)."""
        cached = self._specs.get(name)
        if cached is not None and time.monotonic() - cached[0] < _SPEC_TTL_S:
            return cached[1]
        topologies, _ = await self._stores()
        record = await topologies.get(name)
        if record is None:
            raise NotFoundError(kind="stream topology", name=name)
        topology = Topology.model_validate(record["spec"])
        self._specs[name] = (time.monotonic(), topology)
        return topology

    # -- ingest ---------------------------------------------------------------------------

    async def publish(self, name: str, body: bytes, *, content_type: str, message_id: str) -> str:
        """Queue one message of events for ``name``; returns the queue it went to."""
        topology = await self.topology(name)
        if not isinstance(topology.source, QueueSource):
            raise InvalidInputError(
                field="stream",
                value=name,
                allowed=f"a topology fed by a queue; {name} replays a Lake table",
            )
        if self._publisher is None:
            self._publisher = event_publisher(self.settings)
        await self._publisher.publish_events(
            topology.queue_name, body, content_type=content_type, message_id=message_id
        )
        return topology.queue_name

    # -- helpers --------------------------------------------------------------------------

    def _actor(self, name: str) -> Any:
        try:
            return ray.get_actor(name, namespace=self.settings.ray.namespace)
        except ValueError:
            return None

    def _coordinator(self, name: str) -> Any:
        return self._actor(coordinator_name(name))

    async def _live(self, name: str) -> dict[str, Any]:
        handle = self._coordinator(name)
        if handle is None:
            return {}
        try:
            return dict(await asyncio.wait_for(_awaitable(handle.status.remote()), 5.0))
        except (TimeoutError, ray.exceptions.RayActorError):
            return {"state": "unreachable"}

    async def _queue_stats(self, name: str) -> dict[str, Any] | None:
        if self.settings.secret("amqp_url") is not None:
            return None
        topology = await self.topology(name)
        from actors.stream.sources.queue import queue_actor_name

        actor = self._actor(queue_actor_name(topology.queue_name))
        return None if actor is None else dict(await actor.stats.remote())


def _first_line(exc: BaseException) -> str:
    """The error's own last line (Ray wraps the cause in a long traceback)."""
    lines = [line.strip() for line in str(exc).splitlines() if line.strip()]
    return lines[-1] if lines else type(exc).__name__


async def _awaitable(ref: Any) -> Any:
    return await ref
