"""Runs one topology in epochs: fetch, decode, split by key, process, checkpoint, ack.

The runner is plain asyncio over the ports (source, partitions, checkpoint store,
sinks), so the same code runs in one process (``LocalPartitions``, tests, backfills) and
as the coordinator actor of a Ray deployment (``RayPartitions``).

One epoch, in order (see ``actors/stream/ports.py`` for the delivery protocol):

1. fetch deliveries until ``checkpoint.max_events`` or ``checkpoint.interval_s``;
   skip redeliveries of messages a committed epoch already holds (by message id);
2. decode (poison → ``dead_letters``), derive + filter, split by key hash, submit to
   the partitions (at most ``max_in_flight`` batches queued per partition);
3. drain the partitions, snapshot their states and save the checkpoint: the commit
   point; then write every sink (idempotent per epoch), dead-letter the poison
   deliveries and ack the last delivery (which acks all before it).

A crash anywhere before the save loses nothing: nothing was acked and the sinks hold
nothing of the epoch. A crash after it is repaired by ``start``: it restores the states,
re-writes the sinks from the saved outputs (skipped where already written) and skips
the redelivered messages by id. A lost source connection or a dead partition rolls the
open epoch back to the last checkpoint.
"""

from __future__ import annotations

import logging
import time
from collections import deque
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, ClassVar, Protocol

import pyarrow as pa

from actors.stream.checkpoint import Checkpoint
from actors.stream.decode import dead_letter_table, decode
from actors.stream.operators import (
    Outputs,
    PartitionCore,
    concat_outputs,
    prepare_events,
    split,
)
from actors.stream.ports import CheckpointStore, Delivery, Sink, StreamSource
from actors.stream.runner_stats import RunnerStats
from actors.stream.topology import Topology
from actors.stream.watermark import NO_WATERMARK
from actors.stream.windows import to_ticks
from cluster.errors import DatapunkError, PlatformStateError

log = logging.getLogger(__name__)
RECENT_EPOCHS = 8
FETCH_MAX_MESSAGES = 5_000


class PartitionFailure(DatapunkError):
    """A partition actor died; the open epoch is rolled back and replayed."""

    code: ClassVar[str] = "partition_failed"
    http_status: ClassVar[int] = 503

    def __init__(self, *, partition: int, reason: str) -> None:
        super().__init__(
            f"stream partition {partition} failed ({reason}); the epoch is replayed from the "
            "last checkpoint once it is back",
            partition=partition,
            reason=reason,
        )


class Partitions(Protocol):
    """The stateful side of a topology: ``count`` partitions of ``PartitionCore``."""

    count: int

    async def submit(self, parts: Sequence[pa.Table], seen_max: int) -> None: ...

    async def drain(self) -> list[Outputs]: ...

    async def flush(self, schema: pa.Schema) -> list[Outputs]: ...

    async def snapshot(self) -> list[bytes]: ...

    async def restore(self, states: Sequence[bytes]) -> None: ...


class LocalPartitions:
    """All partitions in this process (tests, backfills, the bench's core path)."""

    def __init__(self, topology: Topology) -> None:
        self.count = topology.partitions
        self._cores = [PartitionCore(topology) for _ in range(self.count)]
        self._done: list[Outputs] = []

    async def submit(self, parts: Sequence[pa.Table], seen_max: int) -> None:
        for core, part in zip(self._cores, parts, strict=True):
            self._done.append(core.process(part, seen_max))

    async def drain(self) -> list[Outputs]:
        done, self._done = self._done, []
        return done

    async def flush(self, schema: pa.Schema) -> list[Outputs]:
        return [core.flush(schema) for core in self._cores]

    async def snapshot(self) -> list[bytes]:
        return [core.snapshot() for core in self._cores]

    async def restore(self, states: Sequence[bytes]) -> None:
        self._done = []
        for core, state in zip(self._cores, states, strict=True):
            core.restore(state)


@dataclass
class _Epoch:
    number: int
    generation: int
    started: float
    outputs: list[Outputs] = field(default_factory=list)
    last: Delivery | None = None
    ids: list[str] = field(default_factory=list)
    dead: list[tuple[Delivery, str]] = field(default_factory=list)
    events: int = 0


class TopologyRunner:
    """One topology's epoch loop over its ports; see the module doc."""

    def __init__(
        self,
        topology: Topology,
        source: StreamSource,
        partitions: Partitions,
        checkpoints: CheckpointStore,
        sinks: Mapping[str, Sequence[Sink]],
        *,
        monotonic: Callable[[], float] = time.monotonic,
        wall: Callable[[], float] = time.time,
        on_commit: Callable[[int, Outputs], None] | None = None,
    ) -> None:
        if partitions.count != topology.partitions:
            raise PlatformStateError(
                f"topology {topology.name} has partitions={topology.partitions} but "
                f"{partitions.count} were given"
            )
        self.topology = topology
        self.source = source
        self.partitions = partitions
        self.checkpoints = checkpoints
        self.sinks = {name: list(s) for name, s in sinks.items() if s}
        self.stats = RunnerStats(topology, wall=wall, monotonic=monotonic)
        self._monotonic = monotonic
        self._on_commit = on_commit
        self._schema = topology.arrow_schema()
        self._required = [
            c for c in {topology.time_column, *topology.key_by} if c not in topology.derive
        ]
        self._recent: deque[list[str]] = deque(maxlen=RECENT_EPOCHS)
        self._recent_set: set[str] = set()
        self._committed: list[bytes] = []
        self._epoch = _Epoch(1, 0, monotonic())
        self._events_schema: pa.Schema | None = None
        self._events_per_message = 1.0
        self.finished = False

    # -- lifecycle ----------------------------------------------------------------------

    async def start(self) -> None:
        """Open sinks, recover from the newest checkpoint (if any), open the source."""
        for sinks in self.sinks.values():
            for sink in sinks:
                await sink.open()
        latest = await self.checkpoints.latest(self.topology.name)
        position = None
        if latest is None:
            self._committed = await self.partitions.snapshot()
            epoch = 1
        else:
            checkpoint = Checkpoint.decode(latest[1])
            self._check_partitions(checkpoint)
            await self.partitions.restore(checkpoint.states)
            self._committed = checkpoint.states
            await self._write_sinks(checkpoint.epoch, checkpoint.outputs)
            self._remember(checkpoint.recent_ids)
            self.stats.restore(checkpoint.stats)
            position, epoch = checkpoint.position, checkpoint.epoch + 1
            self.finished = checkpoint.finished
            log.info("stream %s resumed after epoch %d", self.topology.name, checkpoint.epoch)
        await self.source.open(position)
        self._epoch = _Epoch(epoch, self.source.generation, self._monotonic())

    async def close(self) -> None:
        """Commit what the open epoch holds, then release the source and sinks."""
        if not self.finished and self._epoch.last is not None:
            await self.checkpoint()
        await self.source.close()
        for sinks in self.sinks.values():
            for sink in sinks:
                await sink.close()

    async def run(self, stopping: Callable[[], bool]) -> None:
        """Steps until ``stopping()`` or a bounded source is exhausted."""
        while not stopping() and await self.step():
            pass

    # -- one step -----------------------------------------------------------------------

    async def step(self) -> bool:
        """One fetch and its processing; checkpoints when the epoch is due. False: done."""
        if self.finished:
            return False
        try:
            await self._step()
        except PartitionFailure as failure:
            log.warning("stream %s: %s", self.topology.name, failure.message)
            await self.rollback(failure.message)
        return not self.finished

    async def _step(self) -> None:
        epoch = self._epoch
        if self.source.generation != epoch.generation:
            await self.rollback("the source reconnected")
            epoch = self._epoch
        room = max(1, self.topology.checkpoint.max_events - epoch.events)
        # Messages may carry batches: ask for as many as should hold ``room`` events.
        messages = max(1, min(FETCH_MAX_MESSAGES, int(room / self._events_per_message)))
        remaining = self.topology.checkpoint.interval_s - (self._monotonic() - epoch.started)
        deliveries = await self.source.fetch(messages, max(0.005, remaining))
        if deliveries and deliveries[0].generation != epoch.generation:
            await self.rollback("the source reconnected")
            deliveries = [d for d in deliveries if d.generation == self._epoch.generation]
        if deliveries:
            await self._process(deliveries)
        if self.source.finished and not deliveries:
            await self._finish()
        elif self._due():
            await self.checkpoint()

    async def _process(self, deliveries: list[Delivery]) -> None:
        epoch = self._epoch
        epoch.last = deliveries[-1]
        fresh = [d for d in deliveries if not (d.redelivered and d.message_id in self._recent_set)]
        self.stats.skipped(len(deliveries) - len(fresh))
        epoch.ids.extend(d.message_id for d in fresh)
        decoded = decode(fresh, self._schema, self._required, self.topology.queue_name)
        epoch.dead.extend(decoded.dead)
        events = prepare_events(decoded.events, self.topology)
        if events.num_columns == 0:
            return
        self._events_schema = events.schema
        seen_max = newest_ticks(events, self.topology.time_column)
        parts = split(events, self.topology.key_by, self.partitions.count)
        await self.partitions.submit(parts, seen_max)
        if "events" in self.sinks:
            epoch.outputs.append({"events": events})
        epoch.events += decoded.events.num_rows + len(decoded.dead)
        if fresh:
            seen = (decoded.events.num_rows + len(decoded.dead)) / len(fresh)
            self._events_per_message = 0.8 * self._events_per_message + 0.2 * max(1.0, seen)
        self.stats.received(decoded.events.num_rows, events.num_rows, len(decoded.dead), seen_max)

    def _due(self) -> bool:
        epoch = self._epoch
        elapsed = self._monotonic() - epoch.started
        full = epoch.events >= self.topology.checkpoint.max_events
        return full or elapsed >= self.topology.checkpoint.interval_s

    async def _finish(self) -> None:
        if self._events_schema is not None:
            for outputs in await self.partitions.flush(self._events_schema):
                self._epoch.outputs.append(outputs)
        self.finished = True
        await self.checkpoint(force=True)

    # -- commit ---------------------------------------------------------------------------

    async def checkpoint(self, *, force: bool = False) -> None:
        """Commit the open epoch (see the module doc); an idle epoch just restarts its clock."""
        epoch = self._epoch
        drained = await self.partitions.drain()
        outputs = concat_outputs([*epoch.outputs, *drained])
        if epoch.dead:
            outputs["dead_letters"] = dead_letter_table(epoch.dead)
        if epoch.last is None and not force and not any(t.num_rows for t in outputs.values()):
            self._epoch = _Epoch(epoch.number, epoch.generation, self._monotonic())
            return
        started = self._monotonic()
        states = await self.partitions.snapshot()
        recent = [*self._recent, epoch.ids][-RECENT_EPOCHS:]
        kept = {name: table for name, table in outputs.items() if name in self.sinks}
        checkpoint = Checkpoint(
            epoch=epoch.number,
            states=states,
            outputs=kept,
            position=self.source.position(epoch.last),
            recent_ids=recent,
            stats=self.stats.counters(),
            finished=self.finished,
        )
        await self.checkpoints.save(self.topology.name, epoch.number, checkpoint.encode())
        self._committed = states
        self._remember(recent)
        await self._write_sinks(epoch.number, kept)
        if epoch.dead:
            await self.source.dead_letter([d for d, _ in epoch.dead])
        acked = await self.source.ack(epoch.last) if epoch.last is not None else True
        await self.checkpoints.prune(self.topology.name, self.topology.checkpoint.keep)
        self.stats.committed(epoch.number, outputs, self._monotonic() - started, acked)
        if self._on_commit is not None:
            self._on_commit(epoch.number, outputs)
        self._epoch = _Epoch(epoch.number + 1, self.source.generation, self._monotonic())

    async def rollback(self, reason: str) -> None:
        """Drop the open epoch: partitions back to the last checkpoint, deliveries requeued."""
        await self.partitions.restore(self._committed)
        if self._epoch.generation == self.source.generation:
            await self.source.requeue_unacked()
        self.stats.rolled_back(reason)
        self._epoch = _Epoch(self._epoch.number, self.source.generation, self._monotonic())

    async def _write_sinks(self, epoch: int, outputs: Mapping[str, pa.Table]) -> None:
        for name, sinks in self.sinks.items():
            rows = outputs.get(name)
            if rows is None or rows.num_rows == 0:
                continue
            for sink in sinks:
                await sink.write(epoch, rows)

    def _remember(self, recent: Sequence[Sequence[str]]) -> None:
        self._recent = deque((list(ids) for ids in recent), maxlen=RECENT_EPOCHS)
        self._recent_set = {i for ids in self._recent for i in ids}

    def _check_partitions(self, checkpoint: Checkpoint) -> None:
        if len(checkpoint.states) != self.partitions.count:
            raise PlatformStateError(
                f"topology {self.topology.name}'s checkpoint has {len(checkpoint.states)} "
                f"partitions but it now asks for {self.partitions.count}; deploy with the "
                "old partition count, or redeploy with --fresh to start from empty state"
            )

    def describe(self) -> dict[str, Any]:
        """Status for ``datapunk stream status`` and the gateway."""
        return {
            "epoch": self._epoch.number,
            "finished": self.finished,
            "generation": self._epoch.generation,
            **self.stats.snapshot(),
        }


def newest_ticks(events: pa.Table, time_column: str) -> int:
    """Newest valid event time of ``events`` in ticks (``NO_WATERMARK`` when none)."""
    if events.num_rows == 0:
        return NO_WATERMARK
    ticks = to_ticks(events[time_column], time_column)
    valid = ticks[ticks != NO_WATERMARK]
    return int(valid.max()) if len(valid) else NO_WATERMARK
