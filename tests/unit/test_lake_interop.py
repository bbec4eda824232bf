"""Tables written by LakeCore are plain Iceberg: other tools read the same rows.

A partitioned table gets three appends and a delete; an independently built pyiceberg
catalog (same URI and warehouse, nothing shared with LakeCore) and DuckDB over the
current data files must both see exactly the rows LakeCore sees.
"""

from __future__ import annotations

from datetime import datetime, timedelta
from pathlib import Path

import duckdb
import pyarrow as pa
import pytest
from pyiceberg.catalog import Catalog, load_catalog
from pyiceberg.manifest import DataFileContent

from actors.lake.catalog import CATALOG_NAME, catalog_uri, warehouse_uri
from actors.lake.core import LakeCore
from cluster.settings import Settings, load_settings

START = datetime(2026, 3, 1, 12)
COLUMNS = ["id", "ts", "region", "amount"]


def batch(first: int, count: int, region: str) -> pa.Table:
    ids = list(range(first, first + count))
    return pa.table(
        {
            "id": pa.array(ids, pa.int64()),
            "ts": pa.array([START + timedelta(hours=7 * i) for i in ids], pa.timestamp("us")),
            "region": [region] * count,
            "amount": pa.array([i * 1.5 for i in ids], pa.float64()),
        }
    )


def rows(table: pa.Table) -> list[tuple[object, ...]]:
    return sorted(tuple(r[c] for c in COLUMNS) for r in table.select(COLUMNS).to_pylist())


@pytest.fixture
def settings(tmp_path: Path) -> Settings:
    return load_settings(data_dir=tmp_path)


@pytest.fixture
def written(settings: Settings) -> list[tuple[object, ...]]:
    """default.trips: 3 appends and a delete through LakeCore; returns LakeCore's rows."""
    lake = LakeCore(settings, index=0, sleep=lambda _s: None)
    lake.create_table(
        "trips", schema=batch(0, 1, "x").schema, partition_by=["day(ts)", "bucket(4, id)"]
    )
    lake.append("trips", batch(0, 10, "eu"))
    lake.append("trips", batch(10, 10, "us"))
    lake.append("trips", batch(20, 10, "eu"))
    assert lake.delete("trips", "region = 'us' and id < 15").rows_deleted == 5
    return rows(lake.scan("trips"))


def independent_catalog(settings: Settings) -> Catalog:
    return load_catalog(
        CATALOG_NAME, type="sql", uri=catalog_uri(settings), warehouse=warehouse_uri(settings)
    )


def test_plain_pyiceberg_reads_the_same_rows(
    settings: Settings, written: list[tuple[object, ...]]
) -> None:
    table = independent_catalog(settings).load_table("default.trips")
    assert len(written) == 25
    assert rows(table.scan().to_arrow()) == written
    assert [f.name for f in table.spec().fields] == ["ts_day", "id_bucket"]
    operations = [s.summary.operation.value for s in table.snapshots() if s.summary]
    assert operations[:3] == ["append", "append", "append"]
    assert operations[3:] and set(operations[3:]) <= {"delete", "overwrite"}


def test_duckdb_over_the_current_data_files_reads_the_same_rows(
    settings: Settings, written: list[tuple[object, ...]]
) -> None:
    table = independent_catalog(settings).load_table("default.trips")
    files = table.inspect.files()
    # pyiceberg 0.12 deletes copy-on-write: no delete files, so data files are the truth.
    assert set(files["content"].to_pylist()) == {DataFileContent.DATA.value}
    paths = [p.removeprefix("file://") for p in files["file_path"].to_pylist()]
    assert all(Path(p).is_file() for p in paths)
    relation = duckdb.read_parquet(paths, hive_partitioning=False)
    assert rows(relation.select(", ".join(COLUMNS)).to_arrow_table()) == written
