"""Topologies on a real Ray cluster: the actor pool against the pure core, and kill -9.

The pool runs through ``StreamControl`` exactly as ``datapunk stream deploy`` does: a
coordinator actor, partition actors and the in-cluster queue (no RabbitMQ configured).
"""

from __future__ import annotations

import asyncio
import os
import signal
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pyarrow as pa
import pytest
import ray

from actors.lake.service import LakeService
from actors.stream.control import StreamControl
from actors.stream.coordinator import coordinator_name
from actors.stream.partition_actor import partition_actor_name
from actors.stream.topology import Topology
from cluster.settings import Settings
from tests.stream_support import messages, numbered_events, sorted_rows, window_topology

N = 3000


def pool_topology(name: str, partitions: int = 3) -> Topology:
    return window_topology(
        name=name,
        partitions=partitions,
        actor_cpus=0,
        checkpoint={"interval_s": 0.2, "max_events": 500},
    )


@pytest.fixture
async def control(ray_settings: Settings) -> AsyncIterator[StreamControl]:
    control = StreamControl(ray_settings)
    yield control
    for record in await control.ls():
        await control.stop(record["name"])
    await control.close()


async def publish(control: StreamControl, name: str, events: list[dict[str, Any]]) -> None:
    for body, message_id in messages(events, per_message=10):
        await control.publish(name, body, content_type="application/json", message_id=message_id)


async def wait_consumed(control: StreamControl, name: str, timeout_s: float = 90) -> dict[str, Any]:
    deadline = time.monotonic() + timeout_s
    status: dict[str, Any] = {}
    while time.monotonic() < deadline:
        status = await control.status(name)
        queue = status["queue"] or {}
        if queue.get("ready") == 0 and queue.get("unacked") == 0 and status["live"].get("epochs"):
            return status
        await asyncio.sleep(0.2)
    raise AssertionError(f"{name} did not consume its queue: {status}")


async def reference(tmp_path: Path, events: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The same topology through the pure core, one partition, in this process."""
    from tests.unit.test_stream_runner import World, run_once

    world = World(tmp_path / "reference")
    await run_once(world, window_topology(name="ref"), events)
    return sorted_rows(await world.table("stream.ref_per_10s"), "k", "window_start")


def windows_of(settings: Settings, name: str) -> pa.Table:
    lake = LakeService.from_settings(settings)
    return asyncio.run(lake.scan(f"stream.{name}_per_10s"))


async def test_the_actor_pool_gives_what_the_pure_core_gives(
    control: StreamControl, ray_settings: Settings, tmp_path: Path
) -> None:
    events = numbered_events(N, disorder_s=2.0)  # within max_delay: batching cannot matter
    status = await control.deploy(pool_topology("pool"))
    assert status["state"] == "running"
    await publish(control, "pool", events)
    await wait_consumed(control, "pool")
    stopped = await control.stop("pool")
    assert stopped["state"] == "stopped"
    lake = LakeService.from_settings(ray_settings)
    got = sorted_rows(await lake.scan("stream.pool_per_10s"), "k", "window_start")
    stored = await lake.scan("stream.pool_events")
    assert sorted(stored["seq"].to_pylist()) == list(range(N))
    for row in got:
        row.pop("is_update")
    expected = await reference(tmp_path, events)
    for row in expected:
        row.pop("is_update")
    assert got == expected
    tail = await _tail_after_redeploy(control)
    assert tail["cursor"] == 0  # a fresh coordinator's hub starts empty


async def _tail_after_redeploy(control: StreamControl) -> dict[str, Any]:
    await control.deploy(pool_topology("pool"))
    return await control.tail("pool")


async def test_kill_9_of_a_partition_and_the_coordinator_loses_and_duplicates_nothing(
    control: StreamControl, ray_settings: Settings, tmp_path: Path
) -> None:
    events = numbered_events(N, disorder_s=2.0)
    await control.deploy(pool_topology("killed"))
    namespace = ray_settings.ray.namespace
    await publish(control, "killed", events[: N // 3])
    partition = ray.get_actor(partition_actor_name("killed", 1), namespace=namespace)
    partition_pid = await partition.pid.remote()
    os.kill(partition_pid, signal.SIGKILL)
    await publish(control, "killed", events[N // 3 : 2 * N // 3])
    coordinator = ray.get_actor(coordinator_name("killed"), namespace=namespace)
    pid = (await coordinator.status.remote()).get("pid")
    os.kill(pid, signal.SIGKILL)
    await publish(control, "killed", events[2 * N // 3 :])
    status = await wait_consumed(control, "killed", timeout_s=120)
    assert status["live"]["state"] == "running"
    assert status["live"]["pid"] != pid  # Ray restarted the coordinator; it resumed itself
    assert await partition.pid.remote() != partition_pid
    await control.stop("killed")
    lake = LakeService.from_settings(ray_settings)
    stored = await lake.scan("stream.killed_events")
    assert sorted(stored["seq"].to_pylist()) == list(range(N))
    got = sorted_rows(await lake.scan("stream.killed_per_10s"), "k", "window_start")
    expected = await reference(tmp_path, events)
    assert [(r["k"], r["window_start"], r["n"], r["total"]) for r in got] == [
        (r["k"], r["window_start"], r["n"], r["total"]) for r in expected
    ]


async def test_up_resumes_topologies_that_were_running_from_their_checkpoints(
    control: StreamControl, ray_settings: Settings
) -> None:
    from cluster.platform import resume_streams

    await control.deploy(pool_topology("resumed", partitions=1))
    await publish(control, "resumed", numbered_events(300))
    before = await wait_consumed(control, "resumed")
    # What `datapunk down` leaves: the record says running, no actor is left.
    await control.stop("resumed")
    topologies, _ = await control._stores()
    await topologies.set_status("resumed", "running")
    assert await resume_streams(ray_settings) == ["resumed"]
    status = await control.status("resumed")
    assert status["live"]["state"] == "running"
    assert status["live"]["epoch"] >= max(2, before["live"]["epoch"])  # not from epoch 1
    assert status["live"]["events_in"] == 300  # counters came back with the checkpoint
