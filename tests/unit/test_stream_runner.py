"""The topology runner over the embedded queue, in-memory checkpoints and real Lake sinks.

Crashes are simulated by abandoning a runner at a chosen point (no close, as after a
kill -9) and starting a new one over the same queue, checkpoint store and Lake.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pyarrow as pa
import pytest

from actors.lake.service import LakeService
from actors.stream.build import build_sinks, build_source
from actors.stream.ports import InMemoryCheckpoints, StreamSource
from actors.stream.runner import LocalPartitions, TopologyRunner
from actors.stream.sources.queue import LocalQueueBackend, MessageQueue, QueueSource
from actors.stream.topology import QueueSource as QueueSpec
from actors.stream.topology import Topology
from cluster.cache import MemoryCache
from cluster.errors import PlatformStateError
from cluster.settings import Settings
from tests.stream_support import messages, numbered_events, sorted_rows, until, window_topology


class Crash(Exception):
    """Stands for the process dying at this point."""


class World:
    """One queue, one checkpoint store, one Lake: what survives a crash."""

    def __init__(self, data_dir: Path) -> None:
        self.settings = Settings(data_dir=data_dir)
        self.lake = LakeService.from_settings(self.settings)
        self.queue = MessageQueue("q")
        self.checkpoints = InMemoryCheckpoints()

    def runner(self, topology: Topology) -> TopologyRunner:
        sinks = build_sinks(topology, self.settings, lake=self.lake, cache=MemoryCache())
        source: StreamSource = QueueSource(LocalQueueBackend(self.queue))
        if not isinstance(topology.source, QueueSpec):
            source = build_source(topology, self.settings, self.lake)
        return TopologyRunner(topology, source, LocalPartitions(topology), self.checkpoints, sinks)

    def publish(self, events: list[dict[str, Any]], per_message: int = 1) -> None:
        for body, message_id in messages(events, per_message):
            self.queue.put(body, "application/json", message_id)

    async def drained(self) -> bool:
        stats = self.queue.stats()
        return stats["ready"] == 0 and stats["unacked"] == 0

    async def run_to_end(self, runner: TopologyRunner) -> None:
        await until(self.drained, runner.step)

    async def table(self, name: str) -> pa.Table | None:
        if name not in await self.lake.list_tables("stream"):
            return None
        return await self.lake.scan(name)


@pytest.fixture
def world(data_dir: Path) -> World:
    return World(data_dir)


async def run_once(world: World, topology: Topology, events: list[dict[str, Any]]) -> None:
    world.publish(events)
    runner = world.runner(topology)
    await runner.start()
    await world.run_to_end(runner)


async def test_four_partitions_give_exactly_what_one_engine_gives(tmp_path: Path) -> None:
    events = numbered_events(1500, disorder_s=8.0)  # disorder beyond max_delay: late events
    results = []
    for partitions in (1, 4):
        world = World(tmp_path / f"p{partitions}")
        topology = window_topology(partitions=partitions)
        await run_once(world, topology, events)
        windows = await world.table("stream.orders_per_10s")
        late = await world.table("stream.orders_late")
        results.append(
            (
                sorted_rows(windows, "k", "window_start", "is_update"),
                sorted_rows(late, "seq", "operator", "window_start"),
            )
        )
    assert results[0][0], "no window was emitted"
    assert results[0][1], "the disorder should have produced late events"
    assert results[0] == results[1]


async def test_events_reach_the_lake_once_across_crashes_at_every_step(world: World) -> None:
    topology = window_topology(checkpoint={"interval_s": 0.05, "max_events": 300})
    events = numbered_events(2000)
    world.publish(events)
    crash_points = iter(["mid-epoch", "after-save", "before-ack", None])
    original_save = world.checkpoints.save
    point = next(crash_points)
    while point is not None:
        runner = world.runner(topology)
        await runner.start()
        await runner.step()
        if point == "after-save":

            async def save_then_die(*args: Any, at: str = point) -> None:
                await original_save(*args)
                raise Crash(at)

            world.checkpoints.save = save_then_die  # type: ignore[method-assign]
        elif point == "before-ack":

            async def ack_dies(*_: Any, at: str = point) -> bool:
                raise Crash(at)

            runner.source.ack = ack_dies  # type: ignore[method-assign]
        if point != "mid-epoch":
            with pytest.raises(Crash):
                await until(lambda: _false(), runner.step, limit=500)
        world.checkpoints.save = original_save  # type: ignore[method-assign]
        point = next(crash_points)
    runner = world.runner(topology)
    await runner.start()
    await world.run_to_end(runner)
    stored = await world.table("stream.orders_events")
    assert stored is not None
    assert sorted(stored["seq"].to_pylist()) == list(range(2000))
    assert runner.describe()["redelivered_skipped"] > 0  # the before-ack crash redelivered


async def _false() -> bool:
    return False


async def test_window_results_are_not_duplicated_by_a_crash(tmp_path: Path) -> None:
    events = numbered_events(1200)
    clean = World(tmp_path / "clean")
    await run_once(clean, window_topology(), events)
    crashed = World(tmp_path / "crashed")
    crashed.publish(events)
    runner = crashed.runner(window_topology())
    await runner.start()
    for _ in range(12):
        await runner.step()
    runner = crashed.runner(window_topology())  # the first one "died" mid-epoch
    await runner.start()
    await crashed.run_to_end(runner)
    expected = await clean.table("stream.orders_per_10s")
    got = await crashed.table("stream.orders_per_10s")
    assert sorted_rows(got, "k", "window_start") == sorted_rows(expected, "k", "window_start")


async def test_a_source_reconnect_rolls_the_open_epoch_back(tmp_path: Path) -> None:
    events = numbered_events(1000)
    clean = World(tmp_path / "clean")
    await run_once(clean, window_topology(), events)
    world = World(tmp_path / "reconnect")
    world.publish(events)
    runner = world.runner(window_topology(checkpoint={"interval_s": 5, "max_events": 600}))
    await runner.start()
    await runner.step()
    world.queue.recover()  # what a broker does when the connection drops
    await world.run_to_end(runner)
    assert runner.describe()["rollbacks"] >= 1
    got = await world.table("stream.orders_per_10s")
    expected = await clean.table("stream.orders_per_10s")
    assert sorted_rows(got, "k", "window_start") == sorted_rows(expected, "k", "window_start")
    stored = await world.table("stream.orders_events")
    assert stored is not None and sorted(stored["seq"].to_pylist()) == list(range(1000))


async def test_poison_messages_go_to_the_dead_letter_table_and_the_stream_goes_on(
    world: World,
) -> None:
    world.publish(numbered_events(300))
    world.queue.put(b"{not json", "application/json", "broken")
    world.queue.put(
        json.dumps({"seq": 9999, "k": "a", "v": "high", "ts": 1}).encode(), None, "typed"
    )
    world.queue.put(json.dumps({"seq": 9998, "v": 1.0, "ts": 1}).encode(), None, "keyless")
    world.publish(numbered_events(600)[300:])
    runner = world.runner(window_topology())
    await runner.start()
    await world.run_to_end(runner)
    dead = await world.table("stream.orders_dead_letters")
    assert dead is not None
    reasons = {r["message_id"]: r["reason"] for r in dead.to_pylist()}
    assert set(reasons) == {"broken", "typed", "keyless"}
    assert "not JSON" in reasons["broken"]
    assert "'v'" in reasons["typed"] and "double" in reasons["typed"]
    assert "k" in reasons["keyless"]
    assert {d.message_id for d in world.queue.dead_letters()} == set(reasons)
    stored = await world.table("stream.orders_events")
    assert stored is not None and sorted(stored["seq"].to_pylist()) == list(range(600))


async def test_batched_messages_and_arrow_ipc_bodies_decode_alike(world: World) -> None:
    events = numbered_events(400)
    world.publish(events[:200], per_message=50)
    table = pa.Table.from_pylist(events[200:])
    sink = pa.BufferOutputStream()
    with pa.ipc.new_stream(sink, table.schema) as writer:
        writer.write_table(table)
    world.queue.put(sink.getvalue().to_pybytes(), "application/vnd.apache.arrow.stream", "ipc")
    runner = world.runner(window_topology())
    await runner.start()
    await world.run_to_end(runner)
    stored = await world.table("stream.orders_events")
    assert stored is not None and sorted(stored["seq"].to_pylist()) == list(range(400))


async def test_a_checkpoint_with_another_partition_count_is_refused(world: World) -> None:
    await run_once(world, window_topology(), numbered_events(100))
    runner = world.runner(window_topology(partitions=3))
    with pytest.raises(PlatformStateError, match="--fresh"):
        await runner.start()


async def test_a_lake_replay_ends_with_every_window_flushed(world: World) -> None:
    events = numbered_events(800, disorder_s=0)
    await world.lake.create_namespace("raw", exist_ok=True)
    await world.lake.create_table("raw.orders", data=pa.Table.from_pylist(events))
    topology = window_topology(
        source={"kind": "lake", "table": "raw.orders", "batch_rows": 128}, schema={}
    )
    runner = world.runner(topology)
    await runner.start()
    await until(lambda: _finished(runner), runner.step)
    windows = await world.table("stream.orders_per_10s")
    assert windows is not None
    assert sum(windows["n"].to_pylist()) == 800  # the last windows came from the flush
    assert runner.describe()["finished"] is True


async def _finished(runner: TopologyRunner) -> bool:
    return runner.finished
