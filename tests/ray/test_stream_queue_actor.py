"""The embedded stream queue as a detached Ray actor: found by name, typed errors across
processes, a restarted consumer sees its unacked messages again."""

from __future__ import annotations

import contextlib
import uuid
from collections.abc import AsyncIterator

import pytest
import ray

from actors.stream.sources import (
    QueueFullError,
    QueuePublisher,
    QueueSource,
    RayQueueBackend,
    get_or_create_queue_actor,
    queue_actor_name,
)
from tests.ray.conftest import TEST_NAMESPACE

pytestmark = pytest.mark.ray
JSON = "application/json"


@pytest.fixture
async def topology(ray_cluster: None) -> AsyncIterator[str]:
    name = f"t-{uuid.uuid4().hex[:8]}"
    yield name
    with contextlib.suppress(ValueError):  # already gone
        ray.kill(ray.get_actor(queue_actor_name(name), TEST_NAMESPACE), no_restart=True)


async def test_publish_fetch_ack_through_the_actor(topology: str) -> None:
    handle = get_or_create_queue_actor(topology, TEST_NAMESPACE, max_ready=3)
    assert get_or_create_queue_actor(topology, TEST_NAMESPACE)._actor_id == handle._actor_id

    publisher = QueuePublisher(lambda _queue: RayQueueBackend(handle))
    for n in range(3):
        await publisher.publish_events(topology, b"{}", content_type=JSON, message_id=f"m{n}")
    with pytest.raises(QueueFullError, match="is full"):
        await publisher.publish_events(topology, b"{}", content_type=JSON, message_id="m3")

    first = QueueSource(RayQueueBackend(handle))
    await first.open(None)
    got = await first.fetch(10, 1.0)
    assert [d.message_id for d in got] == ["m0", "m1", "m2"]
    assert await first.ack(got[0])

    # A consumer restarted without closing: the actor hands m1, m2 out again.
    second = QueueSource(RayQueueBackend(ray.get_actor(queue_actor_name(topology), TEST_NAMESPACE)))
    await second.open(None)
    assert await first.ack(got[2]) is False
    again = await second.fetch(10, 1.0)
    assert [(d.message_id, d.redelivered) for d in again] == [("m1", True), ("m2", True)]
    await second.dead_letter([again[0]])
    assert await second.ack(again[-1])
    stats = await RayQueueBackend(handle).stats()
    assert (stats["ready"], stats["unacked"], stats["dead"]) == (0, 0, 1)
