"""The RabbitMQ source on the real broker: drain to a bound, ack after commit, dedupe."""

from __future__ import annotations

import asyncio
import json
import uuid
from collections.abc import AsyncIterator
from pathlib import Path

import aio_pika
import pyarrow as pa
import pytest

from actors.ingest.sources import (
    RabbitMqSource,
    SourceBatch,
    SourcePlan,
    StateView,
    UndecodableMessageError,
)
from actors.ingest.sources.base import Source
from actors.ingest.sources.errors import AckError
from actors.ingest.sources.messages import ARROW_STREAM
from actors.ingest.state import SqlIngestState
from actors.lake.formats import encode
from cluster.db.engine import create_engine, session_factory
from cluster.db.migrate import upgrade
from cluster.errors import NotFoundError, ServiceUnavailableError
from cluster.settings import Settings
from tests.clock import FakeClock

pytestmark = pytest.mark.integration
WAIT_S = 0.3


class Broker:
    """The test's own connection: declares, publishes, counts and deletes its queue."""

    def __init__(self, channel: aio_pika.abc.AbstractChannel, queue: str) -> None:
        self.channel = channel
        self.queue = queue

    async def publish(self, body: bytes, message_id: str | None = None, **props: str) -> None:
        message = aio_pika.Message(body, message_id=message_id, **props)  # type: ignore[arg-type]
        await self.channel.default_exchange.publish(message, routing_key=self.queue)

    async def publish_orders(self, count: int, first: int = 0) -> None:
        for n in range(first, first + count):
            await self.publish(json.dumps({"id": n, "item": f"i{n}"}).encode(), f"m{n}")

    async def ready(self) -> int:
        """Messages ready in the queue (unacked deliveries are not counted)."""
        queue = await self.channel.declare_queue(self.queue, passive=True)
        count = queue.declaration_result.message_count
        assert count is not None
        return count

    async def wait_ready(self, expected: int, timeout_s: float = 5.0) -> int:
        deadline = asyncio.get_running_loop().time() + timeout_s
        while (count := await self.ready()) != expected:
            if asyncio.get_running_loop().time() > deadline:
                break
            await asyncio.sleep(0.05)
        return count


@pytest.fixture
async def broker(amqp_url: str) -> AsyncIterator[Broker]:
    connection = await aio_pika.connect(amqp_url)
    channel = await connection.channel()
    name = f"datapunk-test-{uuid.uuid4().hex[:12]}"
    await channel.declare_queue(name, durable=True)
    try:
        yield Broker(channel, name)
    finally:
        await channel.queue_delete(name)
        await connection.close()


@pytest.fixture
async def state(data_dir: Path) -> AsyncIterator[SqlIngestState]:
    settings = Settings(data_dir=data_dir)
    await upgrade(settings)
    engine = create_engine(settings)
    yield SqlIngestState(session_factory(engine), FakeClock().now)
    await engine.dispose()


def source_for(amqp_url: str, broker: Broker, **options: object) -> RabbitMqSource:
    return RabbitMqSource(amqp_url, broker.queue, wait_s=WAIT_S, **options)  # type: ignore[arg-type]


def rows(batches: list[SourceBatch]) -> tuple[pa.Table, list[str]]:
    tables = [b.table for b in batches if b.table.num_rows]
    refs = [r for b in batches for r in b.refs.to_pylist()]
    return pa.concat_tables(tables, promote_options="permissive"), refs


async def test_drain_read_and_ack_after_commit(
    amqp_url: str, broker: Broker, state: SqlIngestState
) -> None:
    await broker.publish_orders(4)
    await broker.publish(json.dumps([{"id": 10}, {"id": 11}]).encode(), "batch")
    await broker.publish(b"this is not json", "bad")
    source = source_for(amqp_url, broker, undecodable="report")
    assert isinstance(source, Source)
    try:
        plan = source.plan(await state.consumed("p"))
        assert [ref.id for ref in plan.refs] == ["m0", "m1", "m2", "m3", "batch", "bad"]
        assert await broker.ready() == 0  # all delivered to us, none acked yet
        batches = list(source.read(plan))
        table, refs = rows(batches)
        assert table.column("id").to_pylist() == [0, 1, 2, 3, 10, 11]
        assert refs == ["m0", "m1", "m2", "m3", "batch", "batch"]
        [error] = [e for b in batches for e in b.errors]
        assert isinstance(error, UndecodableMessageError)
        assert (error.message_id, error.body) == ("bad", b"this is not json")
        # the runner commits the snapshot here, then records and acks:
        await state.mark_consumed("p", "run_1", plan)
        source.ack(plan)
        with pytest.raises(AckError, match="not held by this source"):
            source.ack(plan)  # settled already
    finally:
        source.close()
    assert await broker.wait_ready(0) == 0  # acked: nothing comes back after close


async def test_nothing_is_acked_before_ack(amqp_url: str, broker: Broker) -> None:
    await broker.publish_orders(3)
    source = source_for(amqp_url, broker)
    plan = source.plan(StateView.empty("p"))
    list(source.read(plan))
    source.close()  # a crash before the commit: no ack
    assert await broker.wait_ready(3) == 3


async def test_a_drain_stops_at_max_messages(amqp_url: str, broker: Broker) -> None:
    await broker.publish_orders(6)
    with source_for(amqp_url, broker, max_messages=4) as source:
        plan = source.plan(StateView.empty("p"))
        assert len(plan.refs) == 4
        assert await broker.ready() == 2
        source.nack(plan)  # a failed run gives them back
        assert await broker.wait_ready(6) == 6


async def test_a_crash_after_commit_redelivers_and_dedupes(
    amqp_url: str, broker: Broker, state: SqlIngestState
) -> None:
    await broker.publish_orders(3)
    first = source_for(amqp_url, broker)
    plan = first.plan(await state.consumed("p"))
    assert len(list(first.read(plan))) == 1
    await state.mark_consumed("p", "run_1", plan)  # committed and recorded...
    first.close()  # ...but the process died before the ack
    assert await broker.wait_ready(3) == 3
    await broker.publish_orders(1, first=3)

    second = source_for(amqp_url, broker)
    try:
        again = second.plan(await state.consumed("p"))
        assert [ref.id for ref in again.refs] == ["m3"]
        assert sorted(ref.id for ref in again.redelivered) == ["m0", "m1", "m2"]
        assert again.skipped == 3
        table, _ = rows(list(second.read(again)))
        assert table.column("id").to_pylist() == [3]
        await state.mark_consumed("p", "run_2", again)
        second.ack(again)
    finally:
        second.close()
    assert await broker.wait_ready(0) == 0


async def test_duplicates_within_one_drain_are_read_once(amqp_url: str, broker: Broker) -> None:
    await broker.publish_orders(2)
    await broker.publish_orders(1)  # a publisher retry with the same message id
    with source_for(amqp_url, broker) as source:
        plan = source.plan(StateView.empty("p"))
        assert [ref.id for ref in plan.refs] == ["m0", "m1"]
        assert [ref.id for ref in plan.redelivered] == ["m0"]
        source.ack(plan)
    assert await broker.wait_ready(0) == 0


async def test_arrow_ipc_messages_and_undecodable_raise(amqp_url: str, broker: Broker) -> None:
    payload, media_type = encode(pa.table({"id": [1, 2], "v": [0.5, 1.5]}), "arrow")
    await broker.publish(payload, "ipc", content_type=media_type)
    await broker.publish(b"\xff\xfe", "junk")
    with source_for(amqp_url, broker) as source:
        plan = source.plan(StateView.empty("p"))
        [ipc, junk] = source.splits(plan, 2)
        assert media_type == ARROW_STREAM
        [batch] = list(source.read(ipc))
        assert batch.table.column("v").to_pylist() == [0.5, 1.5]
        assert batch.refs.to_pylist() == ["ipc", "ipc"]
        with pytest.raises(UndecodableMessageError, match=r"'junk'.*not UTF-8"):
            list(source.read(junk))
        source.nack(plan, requeue=False)  # dropped (a dead-letter exchange would keep them)
    assert await broker.wait_ready(0) == 0


async def test_a_missing_queue_is_not_found(amqp_url: str) -> None:
    with (
        RabbitMqSource(amqp_url, f"datapunk-missing-{uuid.uuid4().hex[:8]}") as source,
        pytest.raises(NotFoundError, match="RabbitMQ queue"),
    ):
        source.plan(StateView.empty("p"))


def test_an_unreachable_broker_is_service_unavailable_without_the_password() -> None:
    url = "amqp://bob:hunter2@127.0.0.1:1/"
    with (
        RabbitMqSource(url, "q", connect_timeout_s=2) as source,
        pytest.raises(ServiceUnavailableError) as caught,
    ):
        source.plan(StateView.empty("p"))
    assert "hunter2" not in caught.value.message and "bob:***@" in caught.value.message


def test_acking_a_plan_from_elsewhere_fails_clearly(amqp_url: str) -> None:
    source = RabbitMqSource(amqp_url, "q")
    plan = SourcePlan.from_dict(
        {"source": "rabbitmq", "kind": "rabbitmq", "refs": [{"kind": "message", "id": "m"}]}
    )
    with pytest.raises(AckError, match="closed"):
        source.ack(plan)
