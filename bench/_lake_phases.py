"""The measurements of ``bench/lake.py``: the data, and each phase against its baseline.

Every phase measures the Lake path and its baseline on the same rows in the same
process, alternating which goes first so drift (other work on the machine, the page
cache, the allocator) hits both alike, and reports medians (append, scan, SQL) or
percentiles (commits). Times are ``time.perf_counter`` seconds.

Importing this module does nothing; run directly it exits 0 (``make bench``).
"""

from __future__ import annotations

import asyncio
import math
import os
import secrets
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import duckdb
import numpy as np
import psycopg2
import pyarrow as pa
import pyarrow.parquet as pq
from pyiceberg.table import TableProperties
from sqlalchemy import make_url

from actors.lake.core import LakeCore
from actors.lake.service import LakeService
from actors.shell import settle_heap
from cluster.settings import Settings

CATEGORIES = 1000
NAMESPACE = "bench"
TABLE = f"{NAMESPACE}.t"
COMMIT_TABLE = f"{NAMESPACE}.commits"
GROUP_BY = (
    "SELECT category, count(*) AS n, sum(value) AS total, avg(value) AS mean "
    "FROM {source} GROUP BY category"
)
Step = Callable[[str], None]


class BenchError(Exception):
    """The benchmark itself could not run or its two paths disagree (not a slow result)."""


# --- data --------------------------------------------------------------------------


def make_data(rows: int, seed: int) -> pa.Table:
    """id int64 (0..n-1), value float64 ~N(100, 25), category string (1000 values,
    uniformly random), ts timestamp[us] uniformly random over 2025; seeded."""
    rng = np.random.default_rng(seed)
    names = pa.array([f"category-{i:04d}" for i in range(CATEGORIES)], pa.string())
    start = np.datetime64("2025-01-01T00:00:00", "us")
    year_us = 365 * 24 * 3600 * 1_000_000
    return pa.table(
        {
            "id": pa.array(np.arange(rows, dtype=np.int64)),
            "value": pa.array(rng.normal(100.0, 25.0, rows)),
            "category": names.take(pa.array(rng.integers(0, CATEGORIES, rows))),
            "ts": pa.array(start + rng.integers(0, year_us, rows).astype("timedelta64[us]")),
        }
    )


# --- append ------------------------------------------------------------------------


@dataclass(frozen=True)
class ParquetOptions:
    """What LakeCore asks pyiceberg to write with, read back from the table properties."""

    codec: str  # pyarrow's spelling
    level: int | None

    @classmethod
    def of(cls, properties: dict[str, str]) -> ParquetOptions:
        codec = properties.get(
            TableProperties.PARQUET_COMPRESSION, TableProperties.PARQUET_COMPRESSION_DEFAULT
        )
        level = properties.get(TableProperties.PARQUET_COMPRESSION_LEVEL)
        return cls(
            codec="none" if codec == "uncompressed" else codec,
            level=int(level) if level not in (None, "") else None,
        )

    def describe(self) -> str:
        return f"{self.codec}, level {'default' if self.level is None else self.level}"


@dataclass
class AppendResult:
    lake_s: list[float] = field(default_factory=list)
    pyarrow_s: list[float] = field(default_factory=list)
    options: ParquetOptions | None = None
    lake_bytes: int = 0
    pyarrow_bytes: int = 0
    pyarrow_file: Path | None = None


def _timed(fn: Callable[[], Any]) -> tuple[float, Any]:
    start = time.perf_counter()
    result = fn()
    return time.perf_counter() - start, result


def lake_files(core: LakeCore, name: str) -> list[str]:
    """Local paths of the data files of the current snapshot (from the scan plan)."""
    _, table = core.tables.load(name)
    return [task.file.file_path.removeprefix("file://") for task in table.scan().plan_files()]


def measure_append(
    core: LakeCore, data: pa.Table, workdir: Path, repeats: int, step: Step
) -> AppendResult:
    """LakeCore.append of all rows into a fresh unpartitioned table vs pq.write_table.

    Repeat 0 fills ``bench.t`` (kept for the later phases) and ``t-0.parquet`` (the scan
    baseline); later repeats write fresh tables and files, removed once timed.
    """
    core.create_namespace(NAMESPACE, exist_ok=True)
    workdir.mkdir(parents=True, exist_ok=True)
    result = AppendResult()
    for rep in range(repeats):
        name = TABLE if rep == 0 else f"{TABLE}_append_{rep}"
        core.create_table(name, schema=data.schema)
        if result.options is None:
            result.options = ParquetOptions.of(dict(core.tables.load(name)[1].properties))
        options = result.options
        path = workdir / f"t-{rep}.parquet"

        def lake(name: str = name) -> None:
            result.lake_s.append(_timed(lambda: core.append(name, data))[0])

        def raw(path: Path = path, options: ParquetOptions = options) -> None:
            write = lambda: pq.write_table(  # noqa: E731
                data, path, compression=options.codec, compression_level=options.level
            )
            result.pyarrow_s.append(_timed(write)[0])

        for run in (lake, raw) if rep % 2 == 0 else (raw, lake):
            run()
            step(f"append {rep + 1}/{repeats}")
        if rep == 0:
            result.lake_bytes = sum(os.path.getsize(f) for f in lake_files(core, name))
            result.pyarrow_bytes, result.pyarrow_file = path.stat().st_size, path
        else:
            core.drop_table(name, purge=True)
            path.unlink()
    return result


# --- scan --------------------------------------------------------------------------


@dataclass
class ScanResult:
    lake_s: list[float] = field(default_factory=list)
    pyarrow_s: list[float] = field(default_factory=list)
    pyarrow_lake_files_s: list[float] = field(default_factory=list)
    rows: int = 0


def measure_scan(
    core: LakeCore, baseline_file: Path, rows: int, repeats: int, step: Step
) -> ScanResult:
    """LakeCore.scan of the whole table vs pq.read_table of the baseline file (and, for
    reference, of the table's own data files); each read once untimed to warm the cache."""
    files = lake_files(core, TABLE)
    runs: dict[str, Callable[[], pa.Table]] = {
        "lake": lambda: core.scan(TABLE),
        "pyarrow": lambda: pq.read_table(baseline_file),
        "pyarrow_lake_files": lambda: pq.read_table(files),
    }
    for label, run in runs.items():
        if (got := run().num_rows) != rows:
            raise BenchError(f"scan {label} read {got} rows, expected {rows}")
    result = ScanResult(rows=rows)
    order = list(runs)
    for rep in range(repeats):
        for label in order if rep % 2 == 0 else order[::-1]:
            seconds, table = _timed(runs[label])
            del table
            getattr(result, f"{label}_s").append(seconds)
        step(f"scan {rep + 1}/{repeats}")
    return result


# --- SQL ---------------------------------------------------------------------------


@dataclass
class SqlResult:
    lake_s: list[float] = field(default_factory=list)
    duckdb_s: list[float] = field(default_factory=list)
    files: int = 0
    groups: int = 0


def _duckdb_list(paths: list[str]) -> str:
    return "[" + ", ".join("'" + p.replace("'", "''") + "'" for p in paths) + "]"


def duckdb_groupby(files: list[str]) -> pa.Table:
    """The baseline: a fresh DuckDB connection reading the table's Parquet files directly
    (as the Lake path opens a fresh connection per query), result fetched as Arrow."""
    con = duckdb.connect(":memory:")
    try:
        source = f"read_parquet({_duckdb_list(files)})"
        return con.sql(GROUP_BY.format(source=source)).fetch_arrow_table()
    finally:
        con.close()


def _same_groups(lake: pa.Table, base: pa.Table) -> bool:
    a, b = lake.sort_by("category"), base.sort_by("category")
    if a["category"] != b["category"] or a["n"] != b["n"]:
        return False
    totals = zip(a["total"].to_pylist(), b["total"].to_pylist(), strict=True)
    return all(math.isclose(x, y, rel_tol=1e-9) for x, y in totals)


async def _measure_sql(
    service: LakeService, files: list[str], repeats: int, step: Step
) -> SqlResult:
    query = GROUP_BY.format(source=TABLE)
    lake_rows, base_rows = await service.sql(query), duckdb_groupby(files)  # warm-up
    if not _same_groups(lake_rows, base_rows):
        raise BenchError("LakeService.sql and DuckDB over the data files disagree")
    result = SqlResult(files=len(files), groups=lake_rows.num_rows)
    for rep in range(repeats):
        for label in ("lake", "duckdb") if rep % 2 == 0 else ("duckdb", "lake"):
            start = time.perf_counter()
            if label == "lake":
                await service.sql(query)
                result.lake_s.append(time.perf_counter() - start)
            else:
                duckdb_groupby(files)
                result.duckdb_s.append(time.perf_counter() - start)
        step(f"GROUP BY {rep + 1}/{repeats}")
    return result


def measure_sql(core: LakeCore, repeats: int, step: Step) -> SqlResult:
    """``LakeService.sql`` with no result cache vs DuckDB ``read_parquet`` of the files."""
    service = LakeService(core, results=None)
    return asyncio.run(_measure_sql(service, lake_files(core, TABLE), repeats, step))


# --- commits -----------------------------------------------------------------------


@dataclass
class CommitResult:
    catalog: str
    lake_ms: list[float] = field(default_factory=list)
    pyarrow_ms: list[float] = field(default_factory=list)
    error: str | None = None


def measure_commits(
    settings: Settings,
    data: pa.Table,
    workdir: Path,
    *,
    label: str,
    warmup: int,
    commits: int,
    batch_rows: int,
    step: Step,
) -> CommitResult:
    """``commits`` timed appends of ``batch_rows`` rows after ``warmup`` untimed ones, each
    followed by pq.write_table of the same rows (the data file alone, no catalog)."""
    core = LakeCore(settings, 0)
    result = CommitResult(catalog=label)
    workdir.mkdir(parents=True, exist_ok=True)
    core.create_namespace(NAMESPACE, exist_ok=True)  # opens the catalog
    settle_heap()  # as the Lake actor does after start-up (actors/shell.py)
    try:
        core.create_table(COMMIT_TABLE, schema=data.schema)
        options = ParquetOptions.of(dict(core.tables.load(COMMIT_TABLE)[1].properties))
        for i in range(warmup + commits):
            offset = (i * batch_rows) % max(1, data.num_rows - batch_rows)
            chunk = data.slice(offset, batch_rows)
            start = time.perf_counter()
            core.append(COMMIT_TABLE, chunk)
            lake_s = time.perf_counter() - start
            start = time.perf_counter()
            pq.write_table(
                chunk,
                workdir / f"c-{i}.parquet",
                compression=options.codec,
                compression_level=options.level,
            )
            raw_s = time.perf_counter() - start
            if i >= warmup:
                result.lake_ms.append(lake_s * 1000)
                result.pyarrow_ms.append(raw_s * 1000)
            step(f"commits on {label} {i + 1}/{warmup + commits}")
        expected = (warmup + commits) * batch_rows
        if (got := core.scan(COMMIT_TABLE, columns=["id"]).num_rows) != expected:
            raise BenchError(f"{label}: {got} rows after the commits, expected {expected}")
    finally:
        core.catalog.engine.dispose()  # release its connections before the DB is dropped
    return result


@contextmanager
def temporary_database(admin_url: str) -> Iterator[str]:
    """A fresh PostgreSQL database for the catalog; its URL; dropped (forced) afterwards."""
    name = f"datapunk_bench_{os.getpid()}_{secrets.token_hex(3)}"
    admin = psycopg2.connect(admin_url, connect_timeout=10)
    admin.autocommit = True
    try:
        with admin.cursor() as cursor:
            cursor.execute(f'CREATE DATABASE "{name}"')
        try:
            yield make_url(admin_url).set(database=name).render_as_string(hide_password=False)
        finally:
            with admin.cursor() as cursor:
                cursor.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
    finally:
        admin.close()
