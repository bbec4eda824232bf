"""What a Lake actor counts for Prometheus: commits by table and operation, scan bytes."""

from __future__ import annotations

import pyarrow as pa

from actors.lake.metrics import COMMIT_METHODS, Observation, observations
from actors.lake.service import LAKE_METHODS

ROWS = pa.table({"id": [1, 2, 3], "region": ["eu", "us", "eu"]})


def test_every_data_commit_counts_once_under_its_table_and_operation() -> None:
    assert COMMIT_METHODS <= LAKE_METHODS  # a renamed service method would go uncounted
    for method in sorted(COMMIT_METHODS):
        assert observations(method, ("sales.orders", ROWS), {}, {"snapshot_id": 7}) == [
            Observation("commits_total", 1, {"table": "sales.orders", "operation": method})
        ]
    by_keyword = observations("delete", (), {"name": "sales.orders", "filter": "id = 1"}, {})
    assert by_keyword[0].tags["table"] == "sales.orders"


def test_scans_count_the_bytes_they_return() -> None:
    [scan] = observations("scan", ("sales.orders",), {"columns": ["id"]}, ROWS)
    assert scan == Observation(
        "scan_bytes_total", float(ROWS.nbytes), {"table": "sales.orders", "method": "scan"}
    )
    assert scan.amount > 0
    [sql] = observations("sql", ("SELECT * FROM sales.orders",), {}, ROWS)
    assert sql.tags == {"table": "", "method": "sql"}  # SQL may read several tables
    assert sql.amount == float(ROWS.nbytes)


def test_metadata_calls_and_other_reads_count_nothing() -> None:
    assert observations("describe", ("sales.orders",), {}, {"name": "sales.orders"}) == []
    assert observations("list_tables", (), {}, ["sales.orders"]) == []
    assert observations("create_table", ("sales.orders",), {}, {}) == []
    assert observations("evolve_schema", ("sales.orders",), {}, {}) == []
