"""The SQL source on a SQLite file: no server needed for URLs, ranges and typing."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pyarrow as pa
import pytest
import sqlalchemy as sa

from actors.ingest.sources import SqlSource, SqlSourceError, StateView
from actors.ingest.sources.sql import sync_url
from cluster.errors import InvalidInputError


@pytest.fixture
def url(tmp_path: Path) -> Iterator[str]:
    path = tmp_path / "source.db"
    engine = sa.create_engine(f"sqlite:///{path}")
    with engine.begin() as connection:
        connection.execute(sa.text("CREATE TABLE t (id INTEGER, v)"))
        connection.execute(
            sa.text("INSERT INTO t VALUES (:id, :v)"),
            [{"id": i, "v": None if i < 3 else i * 1.5} for i in range(1, 6)],
        )
    engine.dispose()
    yield f"sqlite+aiosqlite:///{path}"  # a platform-style async URL works too


def test_async_drivers_are_swapped_for_sync_ones() -> None:
    assert sync_url("sqlite+aiosqlite:///x.db") == "sqlite:///x.db"
    assert sync_url("postgresql+asyncpg://u:p@h/db") == "postgresql+psycopg2://u:p@h/db"
    assert sync_url("mysql+pymysql://h/db") == "mysql+pymysql://h/db"
    with pytest.raises(InvalidInputError, match="url"):
        sync_url("not a url")


def test_a_range_plan_and_a_column_typed_once_its_values_arrive(url: str) -> None:
    source = SqlSource(url, table="t", incremental_column="id", chunk_rows=2)
    plan = source.plan(StateView.empty("p"))
    assert plan.refs[0].size == 5
    batches = list(source.read(plan))
    assert [b.table.schema.field("v").type for b in batches] == [
        pa.null(),  # all NULL so far: typed when a value arrives
        pa.float64(),
        pa.float64(),
    ]
    view = StateView("p", positions={"sql": plan.position or ""})
    assert source.plan(view).empty
    assert [p.refs[0].upto for p in source.splits(plan, 2)][-1] == plan.position
    source.close()


def test_mixed_types_in_one_column_are_a_clear_error(url: str) -> None:
    engine = sa.create_engine(sync_url(url))
    with engine.begin() as connection:
        connection.execute(sa.text("INSERT INTO t VALUES (6, 'text')"))
    engine.dispose()
    source = SqlSource(url, query="SELECT * FROM t ORDER BY id")
    with pytest.raises(SqlSourceError, match=r"column 'v'.*CAST v"):
        list(source.read(source.plan(StateView.empty("p"))))


def test_exactly_one_of_table_or_query(url: str) -> None:
    with pytest.raises(InvalidInputError, match="exactly one"):
        SqlSource(url)
    with pytest.raises(InvalidInputError, match="exactly one"):
        SqlSource(url, table="t", query="SELECT 1")
    assert SqlSource(url, table="main.t").identity == "table:main.t"
