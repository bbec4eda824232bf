"""Ray shell of one key partition, and the runner's ``Partitions`` over a pool of them.

Each partition is a detached actor ``stream-<topology>-p<i>`` holding one
``PartitionCore``. Calls to one actor run in submission order, so the coordinator can
pipeline batches: ``RayPartitions.submit`` keeps at most ``max_in_flight`` batches
queued per partition and waits for the oldest before sending more (backpressure from
the slowest partition to the source, whose prefetch then stops the broker).

A dead partition surfaces as ``PartitionFailure``; Ray restarts the actor
(``max_restarts=-1``) with empty state and the runner restores every partition from
the last checkpoint, so a ``kill -9`` costs one replayed epoch, never an event.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Sequence
from typing import Any

import pyarrow as pa
import ray
from ray.exceptions import RayActorError, RayTaskError

from actors.stream.operators import Outputs, PartitionCore
from actors.stream.runner import PartitionFailure
from actors.stream.topology import Topology


@ray.remote(max_restarts=-1, max_task_retries=0)
class StreamPartitionActor:
    """One ``PartitionCore`` in its own process."""

    def __init__(self, topology: dict[str, Any], index: int) -> None:
        self.index = index
        self.core = PartitionCore(Topology.model_validate(topology))

    def process(self, events: pa.Table, seen_max: int) -> Outputs:
        return self.core.process(events, seen_max)

    def flush(self, schema: pa.Schema) -> Outputs:
        return self.core.flush(schema)

    def snapshot(self) -> bytes:
        return self.core.snapshot()

    def restore(self, state: bytes) -> bool:
        self.core.restore(state)
        return True

    def pid(self) -> int:
        import os

        return os.getpid()


def partition_actor_name(topology: str, index: int) -> str:
    return f"stream-{topology}-p{index}"


def partition_actors(topology: Topology, namespace: str) -> list[Any]:
    """The topology's partition actors, created (detached) where missing."""
    spec = topology.model_dump(mode="json", by_alias=True)
    return [
        StreamPartitionActor.options(  # type: ignore[attr-defined]
            name=partition_actor_name(topology.name, i),
            namespace=namespace,
            lifetime="detached",
            get_if_exists=True,
            num_cpus=topology.actor_cpus,
        ).remote(spec, i)
        for i in range(topology.partitions)
    ]


class RayPartitions:
    """``Partitions`` over partition actors, with bounded in-flight batches each."""

    def __init__(self, handles: Sequence[Any], max_in_flight: int) -> None:
        self.count = len(handles)
        self._handles = list(handles)
        self._max_in_flight = max_in_flight
        self._in_flight: list[deque[Any]] = [deque() for _ in handles]
        self._done: list[Outputs] = []

    async def submit(self, parts: Sequence[pa.Table], seen_max: int) -> None:
        for index, (handle, part) in enumerate(zip(self._handles, parts, strict=True)):
            queue = self._in_flight[index]
            while len(queue) >= self._max_in_flight:
                self._done.append(await self._await(index, queue.popleft()))
            queue.append(handle.process.remote(part, seen_max))

    async def drain(self) -> list[Outputs]:
        for index, queue in enumerate(self._in_flight):
            while queue:
                self._done.append(await self._await(index, queue.popleft()))
        done, self._done = self._done, []
        return done

    async def flush(self, schema: pa.Schema) -> list[Outputs]:
        await self.drain()
        return [await self._await(i, h.flush.remote(schema)) for i, h in enumerate(self._handles)]

    async def snapshot(self) -> list[bytes]:
        refs = [h.snapshot.remote() for h in self._handles]
        return [await self._await(i, ref) for i, ref in enumerate(refs)]

    async def restore(self, states: Sequence[bytes]) -> None:
        """Every partition back to ``states``; waits for restarting actors to return."""
        for queue in self._in_flight:
            queue.clear()
        self._done = []
        refs = [h.restore.remote(s) for h, s in zip(self._handles, states, strict=True)]
        for index, ref in enumerate(refs):
            await self._await(index, ref)

    async def _await(self, index: int, ref: Any) -> Any:
        try:
            return await ref
        except RayActorError as exc:
            raise PartitionFailure(partition=index, reason=type(exc).__name__) from None
        except RayTaskError as exc:
            cause = exc.cause if exc.cause is not None else exc
            raise cause from None
