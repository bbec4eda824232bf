"""Whole pipeline runs through ``PipelineRunner`` on real sources: the real PostgreSQL
(incremental by a timestamp), the real RabbitMQ (quarantine of an undecodable message,
ack after commit, no duplicate on re-publish) and another Lake table (incremental by
snapshot). Every run keeps rows read = written + quarantined + filtered, and the
stored run record says so."""

from __future__ import annotations

import asyncio
import json
import uuid
from collections.abc import AsyncIterator, Iterator, Mapping
from datetime import UTC, datetime, timedelta
from pathlib import Path

import aio_pika
import psycopg2
import pyarrow as pa
import pytest

from actors.ingest.run_records import RunCounts
from actors.ingest.runner import RunOutcome
from actors.ingest.state import SqlIngestState
from actors.lake.core import LakeCore
from cluster.settings import Settings, load_settings
from tests.ingest_support import ingest_state, run_ids, run_pipeline

pytestmark = pytest.mark.integration
T0 = datetime(2026, 1, 1, tzinfo=UTC)


# ---------------------------------------------------------------- shared


@pytest.fixture
def settings(data_dir: Path) -> Settings:
    return load_settings(data_dir=data_dir)


@pytest.fixture
def lake(settings: Settings) -> LakeCore:
    return LakeCore(settings, 0)


@pytest.fixture
async def state(settings: Settings) -> AsyncIterator[SqlIngestState]:
    async with ingest_state(settings) as store:
        yield store


async def run(
    text: str, env: Mapping[str, str], settings: Settings, state: SqlIngestState, lake: LakeCore
) -> RunOutcome:
    """One run with a fresh source (as ``jobs.ingest`` does), closed afterwards."""
    outcome = await run_pipeline(text, settings, state, lake, env)
    record = await state.get_run(outcome.run_id)
    assert record.status == "succeeded" and record.counts == outcome.counts
    c = record.counts
    assert c.read == c.written + c.quarantined + c.filtered  # the invariant, as stored
    assert record.snapshot_id == outcome.snapshot_id
    return outcome


def column(lake: LakeCore, table: str, name: str) -> list[object]:
    return sorted(lake.scan(table)[name].to_pylist())


# ---------------------------------------------------------------- SQL on PostgreSQL

SQL_PIPELINE = """
name: pg_orders
source:
  type: sql
  url: ${SOURCE_URL}
  table: orders
  incremental_column: updated_at
transforms:
  - op: filter
    expr: note <> 'test'
expectations:
  - rule: range
    column: amount
    min: 0
    action: quarantine
sink:
  table: sales.pg_orders
"""


@pytest.fixture
def source_db(postgres_url: str) -> Iterator[str]:
    """A plain ``postgresql://`` URL of the fresh database, holding an ``orders`` table."""
    url = postgres_url.replace("postgresql+asyncpg://", "postgresql://")
    with psycopg2.connect(url) as connection, connection.cursor() as cur:
        cur.execute(
            "CREATE TABLE orders (id serial PRIMARY KEY, amount numeric(10, 2) NOT NULL, "
            "note text NOT NULL, updated_at timestamptz NOT NULL)"
        )
    yield url


def add_orders(url: str, rows: list[tuple[str, str]], start_minute: int) -> None:
    """Insert (amount, note) rows, one minute apart from ``T0 + start_minute``."""
    values = [
        (amount, note, T0 + timedelta(minutes=start_minute + n))
        for n, (amount, note) in enumerate(rows)
    ]
    with psycopg2.connect(url) as connection, connection.cursor() as cur:
        cur.executemany("INSERT INTO orders (amount, note, updated_at) VALUES (%s, %s, %s)", values)


async def test_sql_source_reads_all_then_nothing_then_only_new_rows(
    source_db: str, settings: Settings, state: SqlIngestState, lake: LakeCore
) -> None:
    env = {"SOURCE_URL": source_db}
    add_orders(source_db, [("10.50", "a"), ("2.00", "test"), ("-1.00", "b"), ("3.25", "c")], 0)
    first = await run(SQL_PIPELINE, env, settings, state, lake)
    assert first.counts == RunCounts(read=4, written=2, quarantined=1, filtered=1)
    assert column(lake, "sales.pg_orders", "id") == [1, 4]
    assert column(lake, "sales.pg_orders__quarantine", "id") == [3]
    lineage = (await state.get_run(first.run_id)).lineage
    assert lineage["sink"] == "sales.pg_orders" and lineage["snapshot_id"] == first.snapshot_id

    again = await run(SQL_PIPELINE, env, settings, state, lake)
    assert again.counts == RunCounts()
    assert again.snapshot_id == first.snapshot_id
    assert run_ids(lake, "sales.pg_orders") == [first.run_id]

    add_orders(source_db, [("7.00", "d"), ("8.00", "test")], 60)
    third = await run(SQL_PIPELINE, env, settings, state, lake)
    assert third.counts == RunCounts(read=2, written=1, quarantined=0, filtered=1)
    assert column(lake, "sales.pg_orders", "id") == [1, 4, 5]
    assert run_ids(lake, "sales.pg_orders") == [first.run_id, third.run_id]
    amounts = lake.scan("sales.pg_orders", filter="id = 5")["amount"].to_pylist()
    assert [str(a) for a in amounts] == ["7.00"]


# ---------------------------------------------------------------- RabbitMQ

MQ_PIPELINE = """
name: mq_events
source:
  type: rabbitmq
  url: ${AMQP_URL}
  queue: ${QUEUE}
  wait_s: 0.3
sink:
  table: events.mq
"""


class Queue:
    """The test's own connection to one queue it declared."""

    def __init__(self, channel: aio_pika.abc.AbstractChannel, name: str) -> None:
        self.channel = channel
        self.name = name

    async def publish(self, body: bytes, message_id: str) -> None:
        message = aio_pika.Message(body, message_id=message_id)
        await self.channel.default_exchange.publish(message, routing_key=self.name)

    async def publish_events(self, ids: range) -> None:
        for n in ids:
            await self.publish(json.dumps({"id": n, "kind": f"k{n % 2}"}).encode(), f"m{n}")

    async def settled(self) -> int:
        """Messages ready in the queue: a delivery left unacked when the source closed its
        connection is back by now (the broker requeues it on the channel's close)."""
        await asyncio.sleep(0.2)
        queue = await self.channel.declare_queue(self.name, passive=True)
        return queue.declaration_result.message_count or 0


@pytest.fixture
async def queue(amqp_url: str) -> AsyncIterator[Queue]:
    connection = await aio_pika.connect(amqp_url)
    channel = await connection.channel()
    name = f"datapunk-test-runs-{uuid.uuid4().hex[:12]}"
    await channel.declare_queue(name, durable=True)
    try:
        yield Queue(channel, name)
    finally:
        await channel.queue_delete(name)
        await connection.close()


async def test_rabbitmq_run_quarantines_the_undecodable_acks_and_dedupes(
    amqp_url: str, queue: Queue, settings: Settings, state: SqlIngestState, lake: LakeCore
) -> None:
    env = {"AMQP_URL": amqp_url, "QUEUE": queue.name}
    await queue.publish_events(range(5))
    await queue.publish(b'{"id": 99, "kind": ', "broken")  # truncated JSON
    first = await run(MQ_PIPELINE, env, settings, state, lake)
    assert first.counts == RunCounts(read=6, written=5, quarantined=1, filtered=0)
    assert column(lake, "events.mq", "id") == [0, 1, 2, 3, 4]
    bad = lake.scan("events.mq__quarantine")
    assert bad["_dq_source"].to_pylist() == ["broken"]
    assert bad["_dq_rule"].to_pylist() == ["decode"]
    assert bad["_raw"].to_pylist() == ['{"id": 99, "kind": ']
    assert bad["_dq_run_id"].to_pylist() == [first.run_id]
    assert await queue.settled() == 0  # acked: the closed source gave nothing back

    # A publisher retry of the same message ids: acked as duplicates, not written.
    await queue.publish_events(range(5))
    again = await run(MQ_PIPELINE, env, settings, state, lake)
    assert again.counts == RunCounts()
    assert column(lake, "events.mq", "id") == [0, 1, 2, 3, 4]
    assert await queue.settled() == 0

    await queue.publish_events(range(4, 7))  # m4 again, m5 and m6 new
    third = await run(MQ_PIPELINE, env, settings, state, lake)
    assert third.counts == RunCounts(read=2, written=2)
    assert column(lake, "events.mq", "id") == [0, 1, 2, 3, 4, 5, 6]
    assert lake.scan("events.mq__quarantine").num_rows == 1
    assert run_ids(lake, "events.mq") == [first.run_id, third.run_id]
    assert await queue.settled() == 0


# ---------------------------------------------------------------- another Lake table

LAKE_PIPELINE = """
name: lake_copy
source:
  type: lake
  table: raw.events
transforms:
  - op: filter
    expr: kind <> 'noise'
expectations:
  - rule: not_null
    column: value
    action: quarantine
sink:
  table: curated.events
"""


def events(ids: list[int], kinds: list[str], values: list[float | None]) -> pa.Table:
    return pa.table(
        {
            "id": pa.array(ids, pa.int64()),
            "kind": pa.array(kinds, pa.string()),
            "value": pa.array(values, pa.float64()),
        }
    )


async def test_lake_source_reads_another_table_incrementally(
    settings: Settings, state: SqlIngestState, lake: LakeCore
) -> None:
    lake.create_namespace("raw")
    lake.create_table("raw.events", schema=events([], [], []).schema)
    lake.append("raw.events", events([1, 2, 3, 4], ["a", "noise", "b", "a"], [1.0, 2.0, None, 4.0]))
    first = await run(LAKE_PIPELINE, {}, settings, state, lake)
    assert first.counts == RunCounts(read=4, written=2, quarantined=1, filtered=1)
    assert column(lake, "curated.events", "id") == [1, 4]
    assert column(lake, "curated.events__quarantine", "id") == [3]

    again = await run(LAKE_PIPELINE, {}, settings, state, lake)
    assert again.counts == RunCounts() and again.snapshot_id == first.snapshot_id

    lake.append("raw.events", events([5, 6], ["b", "noise"], [5.0, 6.0]))
    lake.append("raw.events", events([7], ["a"], [7.0]))
    third = await run(LAKE_PIPELINE, {}, settings, state, lake)
    assert third.counts == RunCounts(read=3, written=2, quarantined=0, filtered=1)
    assert column(lake, "curated.events", "id") == [1, 4, 5, 7]
    assert run_ids(lake, "curated.events") == [first.run_id, third.run_id]
