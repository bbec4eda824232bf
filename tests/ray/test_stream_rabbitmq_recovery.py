"""The issue's delivery test against the real RabbitMQ: publish N numbered events, kill
a Stream actor midway, restart RabbitMQ once; every sequence number lands in the Lake
sink exactly once and the window results equal the pure core's."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import time
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
import ray

from actors.lake.errors import NamespaceNotFoundError
from actors.lake.service import LakeService
from actors.stream.control import StreamControl
from actors.stream.coordinator import coordinator_name
from actors.stream.sources.rabbitmq import RabbitPublisher, delete_queues
from cluster.settings import Settings, load_settings
from tests.integration.conftest import AMQP_URL
from tests.ray.conftest import TEST_NAMESPACE
from tests.stream_support import messages, numbered_events, sorted_rows, window_topology

N = 4000
NAME = "rabbit_orders"


@pytest.fixture
async def control(ray_cluster: None, data_dir: Path) -> AsyncIterator[StreamControl]:
    settings = load_settings(
        data_dir=data_dir, ray={"namespace": TEST_NAMESPACE}, amqp_url=AMQP_URL
    )
    await delete_queues(AMQP_URL, f"stream.{NAME}")
    control = StreamControl(settings)
    yield control
    await control.stop(NAME)
    await control.close()
    await delete_queues(AMQP_URL, f"stream.{NAME}")


def restart_rabbitmq() -> None:
    """Stop and start the broker application: every connection drops, queues persist."""
    subprocess.run(["rabbitmqctl", "-q", "stop_app"], check=True, timeout=120)
    try:
        time.sleep(1.0)
    finally:
        subprocess.run(["rabbitmqctl", "-q", "start_app"], check=True, timeout=120)
        subprocess.run(["rabbitmqctl", "-q", "await_startup"], check=True, timeout=120)


async def publish(events: list[dict]) -> None:
    publisher = RabbitPublisher(AMQP_URL)
    try:
        for body, message_id in messages(events, per_message=20):
            await publisher.publish_events(
                f"stream.{NAME}", body, content_type="application/json", message_id=message_id
            )
    finally:
        await publisher.close()


async def stored_seqs(settings: Settings) -> list[int]:
    lake = LakeService.from_settings(settings)
    try:
        tables = await lake.list_tables("stream")
    except NamespaceNotFoundError:  # the sink's first commit creates it
        return []
    if f"stream.{NAME}_events" not in tables:
        return []
    return sorted((await lake.scan(f"stream.{NAME}_events"))["seq"].to_pylist())


async def wait_for(settings: Settings, n: int, timeout_s: float = 120) -> list[int]:
    deadline = time.monotonic() + timeout_s
    seqs: list[int] = []
    while time.monotonic() < deadline:
        seqs = await stored_seqs(settings)
        if len(seqs) >= n:
            return seqs
        await asyncio.sleep(0.3)
    raise AssertionError(f"only {len(seqs)} of {n} events reached the Lake")


async def test_every_event_lands_once_through_a_kill_9_and_a_broker_restart(
    control: StreamControl, tmp_path: Path
) -> None:
    settings = control.settings
    topology = window_topology(
        name=NAME, partitions=2, actor_cpus=0, checkpoint={"interval_s": 0.2, "max_events": 400}
    )
    events = numbered_events(N, disorder_s=2.0)
    await control.deploy(topology)
    await publish(events[: N // 2])
    await wait_for(settings, N // 4)
    coordinator = ray.get_actor(coordinator_name(NAME), namespace=TEST_NAMESPACE)
    os.kill((await coordinator.status.remote())["pid"], signal.SIGKILL)
    await asyncio.to_thread(restart_rabbitmq)
    await publish(events[N // 2 :])
    seqs = await wait_for(settings, N)
    await asyncio.sleep(1.0)  # a duplicate would show up in the next epochs
    seqs = await stored_seqs(settings)
    assert seqs == list(range(N))
    status = await control.status(NAME)
    assert status["live"]["state"] == "running", status
    await control.stop(NAME)
    from tests.unit.test_stream_runner import World, run_once

    reference = World(tmp_path / "reference")
    await run_once(reference, window_topology(name="ref"), events)
    expected = sorted_rows(await reference.table("stream.ref_per_10s"), "k", "window_start")
    lake = LakeService.from_settings(settings)
    got = sorted_rows(await lake.scan(f"stream.{NAME}_per_10s"), "k", "window_start")
    assert [(r["k"], r["window_start"], r["n"]) for r in got] == [
        (r["k"], r["window_start"], r["n"]) for r in expected
    ]
