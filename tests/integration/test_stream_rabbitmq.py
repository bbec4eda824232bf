"""The stream's RabbitMQ source and publisher on the real broker: declare, fetch, ack
multiple, redelivery after reopen / requeue / a dropped connection, dead letters."""

from __future__ import annotations

import asyncio
import json
import re
import shutil
import subprocess
import uuid
from collections.abc import AsyncIterator

import aio_pika
import pyarrow as pa
import pyarrow.ipc as pa_ipc
import pytest

from actors.ingest.sources.messages import ARROW_STREAM, decode_body
from actors.stream.ports import Delivery
from actors.stream.sources import RabbitPublisher, RabbitStreamSource, delete_queues
from cluster.errors import PlatformStateError, ServiceUnavailableError

pytestmark = pytest.mark.integration
JSON = "application/json"


@pytest.fixture
async def queue(amqp_url: str) -> AsyncIterator[str]:
    name = f"datapunk-test-stream-{uuid.uuid4().hex[:12]}"
    yield name
    await delete_queues(amqp_url, name)


@pytest.fixture
async def publisher(amqp_url: str) -> AsyncIterator[RabbitPublisher]:
    publisher = RabbitPublisher(amqp_url)
    yield publisher
    await publisher.close()


async def publish_json(publisher: RabbitPublisher, queue: str, ids: range) -> None:
    for n in ids:
        body = json.dumps({"id": n}).encode()
        await publisher.publish_events(queue, body, content_type=JSON, message_id=f"m{n}")


async def fetch_n(source: RabbitStreamSource, n: int, timeout_s: float = 10.0) -> list[Delivery]:
    """Fetch until ``n`` deliveries came (deliveries arrive asynchronously)."""
    out: list[Delivery] = []
    deadline = asyncio.get_running_loop().time() + timeout_s
    while len(out) < n and asyncio.get_running_loop().time() < deadline:
        out += await source.fetch(n - len(out), 0.5)
    return out


async def counts(url: str, queue: str) -> int:
    """Messages ready in ``queue`` (unacked deliveries are not counted)."""
    connection = await aio_pika.connect(url)
    try:
        channel = await connection.channel()
        declared = await channel.declare_queue(queue, passive=True)
        return declared.declaration_result.message_count or 0
    finally:
        await connection.close()


async def wait_count(url: str, queue: str, expected: int, timeout_s: float = 5.0) -> int:
    deadline = asyncio.get_running_loop().time() + timeout_s
    while (count := await counts(url, queue)) != expected:
        if asyncio.get_running_loop().time() > deadline:
            break
        await asyncio.sleep(0.05)
    return count


async def test_publish_before_the_consumer_then_fetch_and_ack_multiple(
    amqp_url: str, queue: str, publisher: RabbitPublisher
) -> None:
    await publish_json(publisher, queue, range(5))
    source = RabbitStreamSource(amqp_url, queue, prefetch=100)
    await source.open(None)
    try:
        got = await fetch_n(source, 5)
        assert [d.message_id for d in got] == [f"m{n}" for n in range(5)]
        assert all(d.content_type == JSON and not d.redelivered for d in got)
        assert {d.generation for d in got} == {source.generation}
        assert source.position(got[-1]) is None and not source.finished
        assert await source.ack(got[2])  # acks m0..m2 with one multiple ack
        assert await source.fetch(10, 0.2) == []
    finally:
        await source.close()

    again = RabbitStreamSource(amqp_url, queue)
    await again.open(None)
    try:
        back = await fetch_n(again, 2)
        assert sorted(d.message_id for d in back) == ["m3", "m4"]
        assert all(d.redelivered for d in back)
        assert await again.ack(max(back, key=lambda d: d.tag))
    finally:
        await again.close()
    assert await wait_count(amqp_url, queue, 0) == 0


async def test_requeue_unacked_bumps_the_generation_and_redelivers(
    amqp_url: str, queue: str, publisher: RabbitPublisher
) -> None:
    await publish_json(publisher, queue, range(3))
    source = RabbitStreamSource(amqp_url, queue)
    await source.open(None)
    try:
        first = await fetch_n(source, 3)
        generation = source.generation
        await source.requeue_unacked()
        assert source.generation == generation + 1
        assert await source.ack(first[-1]) is False  # its generation is gone
        back = await fetch_n(source, 3)
        assert sorted(d.message_id for d in back) == ["m0", "m1", "m2"]
        assert all(d.redelivered and d.generation == source.generation for d in back)
        assert await source.ack(max(back, key=lambda d: d.tag))
        assert await source.fetch(10, 0.2) == []
    finally:
        await source.close()
    assert await wait_count(amqp_url, queue, 0) == 0


async def test_dead_letters_land_in_the_dead_queue(
    amqp_url: str, queue: str, publisher: RabbitPublisher
) -> None:
    await publish_json(publisher, queue, range(3))
    source = RabbitStreamSource(amqp_url, queue)
    await source.open(None)
    try:
        got = await fetch_n(source, 3)
        await source.dead_letter([got[2]])
        assert await source.ack(got[2])  # upto was dead-lettered: acks m0, m1
    finally:
        await source.close()
    assert await wait_count(amqp_url, queue, 0) == 0
    assert await wait_count(amqp_url, f"{queue}.dead", 1) == 1
    connection = await aio_pika.connect(amqp_url)
    try:
        dead = await (await connection.channel()).get_queue(f"{queue}.dead")
        message = await dead.get(no_ack=True)
        assert message is not None and message.message_id == "m2"
    finally:
        await connection.close()


async def test_arrow_and_json_bodies_come_through(
    amqp_url: str, queue: str, publisher: RabbitPublisher
) -> None:
    table = pa.table({"id": pa.array([1, 2], pa.int64()), "name": ["a", "b"]})
    sink = pa.BufferOutputStream()
    with pa_ipc.new_stream(sink, table.schema) as writer:
        writer.write_table(table)
    await publisher.publish_events(
        queue, sink.getvalue().to_pybytes(), content_type=ARROW_STREAM, message_id="arrow"
    )
    await publisher.publish_events(
        queue, b'[{"id": 3, "name": "c"}]', content_type=JSON, message_id="json"
    )
    source = RabbitStreamSource(amqp_url, queue)
    await source.open(None)
    try:
        arrow, doc = await fetch_n(source, 2)
        assert decode_body(arrow.body, arrow.content_type, arrow.message_id, queue).equals(table)
        assert decode_body(doc.body, doc.content_type, doc.message_id, queue).to_pylist() == [
            {"id": 3, "name": "c"}
        ]
        assert await source.ack(doc)
    finally:
        await source.close()


@pytest.mark.skipif(shutil.which("rabbitmqctl") is None, reason="needs rabbitmqctl")
async def test_a_dropped_connection_starts_a_new_generation(
    amqp_url: str, queue: str, publisher: RabbitPublisher
) -> None:
    name = f"stream-drop-{uuid.uuid4().hex[:8]}"
    url = f"{amqp_url}?name={name}&reconnect_interval=0.2"
    await publish_json(publisher, queue, range(2))
    source = RabbitStreamSource(url, queue)
    await source.open(None)
    try:
        first = await fetch_n(source, 2)
        generation = source.generation
        await asyncio.to_thread(close_connection_named, name)
        back = await fetch_n(source, 2, timeout_s=20)
        assert source.generation > generation
        assert await source.ack(first[-1]) is False
        assert sorted(d.message_id for d in back) == ["m0", "m1"]
        assert all(d.redelivered and d.generation == source.generation for d in back)
        assert await source.ack(max(back, key=lambda d: d.tag))
    finally:
        await source.close()
    assert await wait_count(amqp_url, queue, 0) == 0


def close_connection_named(name: str) -> None:
    listing = subprocess.run(
        ["rabbitmqctl", "-q", "list_connections", "--no-table-headers", "pid", "client_properties"],
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    ).stdout
    pids = [
        match.group(0)
        for line in listing.splitlines()
        if f'{{"connection_name","{name}"}}' in line
        and (match := re.match(r"<[^>]+>", line)) is not None
    ]
    assert len(pids) == 1, listing
    subprocess.run(
        ["rabbitmqctl", "close_connection", pids[0], "test drop"],
        capture_output=True,
        timeout=60,
        check=True,
    )


async def test_a_queue_declared_otherwise_is_refused_by_name(amqp_url: str, queue: str) -> None:
    connection = await aio_pika.connect(amqp_url)
    try:
        await (await connection.channel()).declare_queue(queue, durable=True)  # classic
    finally:
        await connection.close()
    source = RabbitStreamSource(amqp_url, queue)
    with pytest.raises(PlatformStateError, match=queue):
        await source.open(None)


async def test_unreachable_broker_is_a_typed_error() -> None:
    source = RabbitStreamSource("amqp://guest:secret@127.0.0.1:1/", "q", connect_timeout_s=2)
    with pytest.raises(ServiceUnavailableError) as caught:
        await source.open(None)
    assert "secret" not in str(caught.value)


async def test_alerts_go_to_a_durable_topic_exchange(
    amqp_url: str, publisher: RabbitPublisher
) -> None:
    exchange = f"datapunk-test-alerts-{uuid.uuid4().hex[:8]}"
    connection = await aio_pika.connect(amqp_url)
    try:
        channel = await connection.channel()
        target = await channel.declare_exchange(exchange, aio_pika.ExchangeType.TOPIC, durable=True)
        inbox = await channel.declare_queue(exclusive=True)
        await inbox.bind(target, "alerts.#")
        await publisher.publish_alert(exchange, "alerts.fraud", b'{"score": 9}', "a1")
        message = None
        for _ in range(50):
            if (message := await inbox.get(no_ack=True, fail=False)) is not None:
                break
            await asyncio.sleep(0.05)
        assert message is not None and message.message_id == "a1"
        assert json.loads(message.body) == {"score": 9}
        await channel.exchange_delete(exchange)
    finally:
        await connection.close()
