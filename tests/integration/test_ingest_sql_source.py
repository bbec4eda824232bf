"""The SQL source on the real PostgreSQL: incremental by high-water mark, queries, splits."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Iterator
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from pathlib import Path

import pyarrow as pa
import pytest
import sqlalchemy as sa

from actors.ingest.sources import SourcePlan, SqlSource, SqlSourceError, StateView
from actors.ingest.sources.sql import sync_url
from actors.ingest.state import SqlIngestState
from cluster.db.engine import create_engine, session_factory
from cluster.db.migrate import upgrade
from cluster.errors import ServiceUnavailableError
from cluster.settings import Settings
from tests.clock import FakeClock

pytestmark = pytest.mark.integration
T0 = datetime(2026, 1, 1, tzinfo=UTC)


@pytest.fixture
def db(postgres_url: str) -> Iterator[sa.Engine]:
    engine = sa.create_engine(sync_url(postgres_url))
    with engine.begin() as connection:
        connection.execute(
            sa.text(
                "CREATE TABLE orders (id serial PRIMARY KEY, amount numeric(10, 2), "
                "note text, updated_at timestamptz NOT NULL, payload jsonb)"
            )
        )
    yield engine
    engine.dispose()


def add_orders(db: sa.Engine, count: int, start_minute: int = 0) -> None:
    rows = [
        {
            "amount": Decimal(f"{n}.50"),
            "note": f"order {n}",
            "at": T0 + timedelta(minutes=start_minute + n),
            "payload": json.dumps({"n": n}),
        }
        for n in range(count)
    ]
    with db.begin() as connection:
        connection.execute(
            sa.text(
                "INSERT INTO orders (amount, note, updated_at, payload) "
                "VALUES (:amount, :note, :at, CAST(:payload AS jsonb))"
            ),
            rows,
        )


@pytest.fixture
async def state(data_dir: Path, postgres_url: str) -> AsyncIterator[SqlIngestState]:
    settings = Settings(data_dir=data_dir, database_url=postgres_url)
    await upgrade(settings)
    engine = create_engine(settings)
    yield SqlIngestState(session_factory(engine), FakeClock().now)
    await engine.dispose()


def read_table(source: SqlSource, plan: SourcePlan) -> tuple[pa.Table, list[str]]:
    batches = list(source.read(plan))
    refs = [r for b in batches for r in b.refs.to_pylist()]
    return pa.concat_tables([b.table for b in batches]), refs


async def test_first_plan_reads_all_then_only_new_rows(
    db: sa.Engine, postgres_url: str, state: SqlIngestState
) -> None:
    add_orders(db, 5)
    source = SqlSource(postgres_url, table="orders", incremental_column="id", chunk_rows=2)
    first = source.plan(await state.consumed("p"))
    assert first.refs[0].size == 5 and first.refs[0].after is None
    batches = list(source.read(first))
    assert [b.table.num_rows for b in batches] == [2, 2, 1]  # chunked fetch
    table = pa.concat_tables([b.table for b in batches])
    assert table.column("id").to_pylist() == [1, 2, 3, 4, 5]
    assert [r for b in batches for r in b.refs.to_pylist()][-1] == "table:orders:5"
    await state.mark_consumed("p", "run_1", first)

    assert source.plan(await state.consumed("p")).empty
    add_orders(db, 3, start_minute=100)
    second = source.plan(await state.consumed("p"))
    table, _ = read_table(source, second)
    assert table.column("id").to_pylist() == [6, 7, 8]
    await state.mark_consumed("p", "run_2", second)
    assert source.plan(await state.consumed("p")).empty
    source.close()


async def test_a_timestamp_high_water_mark(
    db: sa.Engine, postgres_url: str, state: SqlIngestState
) -> None:
    add_orders(db, 4)
    source = SqlSource(postgres_url, table="orders", incremental_column="updated_at")
    first = source.plan(await state.consumed("p"))
    table, _ = read_table(source, first)
    assert table.num_rows == 4
    await state.mark_consumed("p", "run_1", first)
    add_orders(db, 2, start_minute=10)
    table, _ = read_table(source, source.plan(await state.consumed("p")))
    assert table.column("updated_at").to_pylist() == [
        T0 + timedelta(minutes=10),
        T0 + timedelta(minutes=11),
    ]
    source.close()


def test_types_are_inferred_from_the_result(db: sa.Engine, postgres_url: str) -> None:
    add_orders(db, 2)
    source = SqlSource(postgres_url, table="orders", db_schema="public")
    table, refs = read_table(source, source.plan(StateView.empty("p")))
    schema = table.schema
    assert schema.field("id").type == pa.int64()
    assert schema.field("amount").type == pa.decimal128(38, 2)
    assert schema.field("note").type == pa.string()
    assert schema.field("updated_at").type == pa.timestamp("us", tz="UTC")
    assert schema.field("payload").type == pa.string()  # JSON arrives as JSON text
    assert sorted(table.column("payload").to_pylist()) == ['{"n":0}', '{"n":1}']
    assert table.column("amount").to_pylist() == [Decimal("0.50"), Decimal("1.50")]
    assert refs == ["table:public.orders:1", "table:public.orders:2"]
    source.close()


async def test_a_query_source(db: sa.Engine, postgres_url: str, state: SqlIngestState) -> None:
    add_orders(db, 6)
    query = "SELECT id, amount * 2 AS doubled FROM orders WHERE id % 2 = 0;"
    source = SqlSource(postgres_url, query=query, incremental_column="id", name="evens")
    assert source.identity.startswith("query:")
    first = source.plan(await state.consumed("p"))
    table, _ = read_table(source, first)
    assert table.column_names == ["id", "doubled"]
    assert table.column("id").to_pylist() == [2, 4, 6]
    await state.mark_consumed("p", "run_1", first)
    add_orders(db, 2)  # ids 7, 8
    table, _ = read_table(source, source.plan(await state.consumed("p")))
    assert table.column("id").to_pylist() == [8]
    full = SqlSource(postgres_url, query="SELECT count(*) AS n FROM orders")
    again = full.plan(await state.consumed("p"))
    assert read_table(full, again)[0].column("n").to_pylist() == [8]  # no HWM: every run
    source.close()
    full.close()


def test_splits_cover_the_range_once(db: sa.Engine, postgres_url: str) -> None:
    add_orders(db, 10)
    source = SqlSource(postgres_url, table="orders", incremental_column="id")
    plan = source.plan(StateView.empty("p"))
    parts = source.splits(plan, 3)
    assert len(parts) == 3 and all(p.position == plan.position for p in parts)
    ids = [i for part in parts for i in read_table(source, part)[0].column("id").to_pylist()]
    assert sorted(ids) == list(range(1, 11))
    by_time = SqlSource(postgres_url, table="orders", incremental_column="updated_at")
    timed = by_time.splits(by_time.plan(StateView.empty("p")), 4)
    assert sum(read_table(by_time, p)[0].num_rows for p in timed) == 10
    no_column = SqlSource(postgres_url, table="orders")
    whole = no_column.plan(StateView.empty("p"))
    assert no_column.splits(whole, 4) == [whole]
    for one in (source, by_time, no_column):
        one.close()


def test_a_wrong_table_or_column_is_a_clear_error(db: sa.Engine, postgres_url: str) -> None:
    with pytest.raises(SqlSourceError, match="no_such_table") as caught:
        SqlSource(postgres_url, table="no_such_table").read(
            SqlSource(postgres_url, table="no_such_table").plan(StateView.empty("p"))
        ).__next__()
    assert "table 'no_such_table'" in caught.value.message
    with pytest.raises(SqlSourceError, match="nope"):
        SqlSource(postgres_url, table="orders", incremental_column="nope").plan(
            StateView.empty("p")
        )


def test_the_password_never_appears_in_errors() -> None:
    url = "postgresql://bob:hunter2@127.0.0.1:1/x"
    with pytest.raises(ServiceUnavailableError) as caught:
        SqlSource(url, table="t", incremental_column="id").plan(StateView.empty("p"))
    assert "hunter2" not in caught.value.message
    assert "bob:***@127.0.0.1:1" in caught.value.message
