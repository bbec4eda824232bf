"""Benchmark: a files pipeline (CSV -> checks -> Lake table) versus raw pyarrow CSV -> Parquet.

One run, one seeded CSV of orders in a temp folder (order_id int, customer string,
region string (10 values), quantity int, price float, ordered_at ISO timestamp; about
0.1% of rows with an empty order_id and 0.05% with a price outside 0..10000):

1. **pipeline**: ``jobs.ingest.run_file`` (parallelism 1, in this process) of a pipeline
   that reads the file (``format: csv``), checks two expectations (``not_null order_id``
   and ``range price 0..10000``, both ``quarantine``) and appends to ``bench.orders``;
   rows/s = rows read / wall time of ``run_file``. Each repeat gets a fresh data dir
   whose platform DB and Lake catalog exist already (a steady-state deployment; their
   one-time creation is not timed), so the run creates the table and writes it;
2. **baseline**: ``pyarrow.csv.read_csv`` + ``pyarrow.parquet.write_table`` of the same
   file with the codec and level the Lake set on the sink table (zstd by default).

An untimed warm-up run on 20,000 rows pays first-use costs (imports, caches) and creates
the table whose codec the baseline copies. Then the two alternate which goes first,
repeat by repeat (5 repeats unless ``--repeats``); figures are medians, and CPU seconds
(every thread of this process) are shown beside wall seconds. Each run's
counts must satisfy read = written + quarantined + filtered, read = rows in the file
and quarantined = bad rows generated, and the table must hold ``written`` rows; if not,
the script says so and exits 1. Prints a table of the figures, then, last:
``target ingest_vs_pyarrow_csv_parquet: R (goal >= 0.6) met|missed``.

Run: ``python bench/ingest.py [--rows N] [--quick] [--repeats R] [--derive]``.
Exit 0 whether the goal is met or not; 1 when a run's counts are wrong; 2 when the
benchmark could not run.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import shutil
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.csv as pa_csv
import pyarrow.parquet as pq
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    SpinnerColumn,
    TextColumn,
    TimeElapsedColumn,
)

from cluster.console import console, key_value_table
from cluster.errors import DatapunkError
from cluster.logging import configure_logging
from cluster.settings import Settings, load_settings

if __package__ in (None, ""):  # `python bench/ingest.py`: make the bench package importable
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from actors.ingest.runner import RunOutcome
from actors.lake.core import LakeCore
from bench._lake_phases import BenchError, ParquetOptions, lake_files
from bench._targets import Figure, Target, figures_table, median, require_positive
from cluster.db.migrate import ensure_schema
from jobs.ingest import run_file

ROWS, QUICK_ROWS, SEED = 5_000_000, 500_000, 20_260_101
TARGET_NAME, GOAL = "ingest_vs_pyarrow_csv_parquet", 0.6
NAMESPACE, SINK = "bench", "bench.orders"
REGIONS = ("north", "south", "east", "west", "central", "alps", "coast", "isles", "metro", "rural")
CUSTOMERS = 100_000
NULL_ID_FRACTION, BAD_PRICE_FRACTION = 0.001, 0.0005
_CHUNK_ROWS = 500_000
WARMUP_ROWS = 20_000


# --- data --------------------------------------------------------------------------


@dataclass(frozen=True)
class Generated:
    path: Path
    rows: int
    null_ids: int
    bad_prices: int
    bad_rows: int  # rows breaking either rule (a row breaking both counts once)
    bytes: int


def _chunk(rng: np.random.Generator, first: int, n: int) -> tuple[pa.Table, int, int, int]:
    """Rows ``first``..``first + n - 1``: the table and its null-id, bad-price, bad-row counts."""
    null_id = rng.random(n) < NULL_ID_FRACTION
    bad_price = rng.random(n) < BAD_PRICE_FRACTION
    price = np.round(rng.gamma(2.0, 40.0, n) + 0.5, 2)
    price[bad_price] = np.where(rng.random(int(bad_price.sum())) < 0.5, -1.0, 25_000.0)
    seconds = rng.integers(0, 365 * 24 * 3600, n).astype("timedelta64[s]")
    ordered_at = pa.array(np.datetime64("2025-01-01T00:00:00", "s") + seconds)
    customers = pc.binary_join_element_wise(
        "customer-", pa.array(rng.integers(0, CUSTOMERS, n)).cast(pa.string()), ""
    )
    table = pa.table(
        {
            "order_id": pa.array(np.arange(first, first + n, dtype=np.int64), mask=null_id),
            "customer": customers,
            "region": pa.array(REGIONS).take(pa.array(rng.integers(0, len(REGIONS), n))),
            "quantity": pa.array(rng.integers(1, 20, n)),
            "price": pa.array(price),
            "ordered_at": pc.strftime(ordered_at, format="%Y-%m-%dT%H:%M:%S"),
        }
    )
    return table, int(null_id.sum()), int(bad_price.sum()), int((null_id | bad_price).sum())


def write_orders(path: Path, rows: int, seed: int, step: Callable[[int], None]) -> Generated:
    """A seeded orders CSV at ``path`` (header row, ISO timestamps, empty = null)."""
    rng = np.random.default_rng(seed)
    null_ids = bad_prices = bad_rows = 0
    writer: pa_csv.CSVWriter | None = None
    try:
        for first in range(0, rows, _CHUNK_ROWS):
            n = min(_CHUNK_ROWS, rows - first)
            table, nulls, prices, bad = _chunk(rng, first + 1, n)
            if writer is None:
                writer = pa_csv.CSVWriter(str(path), table.schema)
            writer.write_table(table)
            null_ids, bad_prices, bad_rows = null_ids + nulls, bad_prices + prices, bad_rows + bad
            step(n)
    finally:
        if writer is not None:
            writer.close()
    return Generated(path, rows, null_ids, bad_prices, bad_rows, path.stat().st_size)


def pipeline_yaml(csv_path: Path, derive: bool) -> str:
    transforms = (
        "transforms:\n  - op: derive\n    column: total\n    expr: quantity * price\n"
        if derive
        else ""
    )
    return (
        "name: bench_orders\n"
        "description: bench/ingest.py, generated\n"
        "source:\n"
        "  type: files\n"
        f"  path: {json.dumps(str(csv_path))}\n"
        "  format: csv\n"
        f"{transforms}"
        "expectations:\n"
        "  - rule: not_null\n    column: order_id\n    action: quarantine\n"
        "  - rule: range\n    column: price\n    min: 0\n    max: 10000\n    action: quarantine\n"
        "sink:\n"
        f"  table: {SINK}\n"
        "  mode: append\n"
    )


# --- measurement -------------------------------------------------------------------


@dataclass(frozen=True)
class PipelineRun:
    seconds: float  # wall time of run_file
    cpu_s: float  # CPU time of this process (every thread) during run_file
    outcome: RunOutcome
    table_rows: int  # total-records of the sink's current snapshot
    lake_bytes: int


@dataclass(frozen=True)
class BaselineRun:
    seconds: float
    cpu_s: float
    read_s: float
    write_s: float
    rows: int
    bytes: int


@dataclass
class Results:
    data: Generated
    derive: bool
    pipeline: list[PipelineRun] = field(default_factory=list)
    baseline: list[BaselineRun] = field(default_factory=list)
    options: ParquetOptions | None = None
    setup_s: list[float] = field(default_factory=list)


def bench_settings(data_dir: Path) -> Settings:
    """A private data dir; embedded platform DB and catalog (URLs unset) inside it."""
    return load_settings(data_dir=data_dir, database_url=None, catalog_url=None)


def prepare(settings: Settings) -> None:
    """What a deployment already has: the platform DB schema and the Lake namespace."""
    asyncio.run(ensure_schema(settings))
    core = LakeCore(settings, 0)
    core.create_namespace(NAMESPACE, exist_ok=True)
    core.catalog.engine.dispose()


def run_pipeline(
    yaml_path: Path, data_dir: Path, progress: Callable[[int], None]
) -> tuple[PipelineRun, ParquetOptions]:
    settings = bench_settings(data_dir)
    start, cpu = time.perf_counter(), time.process_time()
    outcome = run_file(yaml_path, settings, parallelism=1, progress=progress)
    seconds, cpu_s = time.perf_counter() - start, time.process_time() - cpu
    core = LakeCore(settings, 0)
    try:
        described = core.describe(SINK)
        current = next(
            s for s in described.snapshots if s.snapshot_id == described.current_snapshot_id
        )
        table_rows = int(current.summary.get("total-records", -1))
        size = sum(os.path.getsize(f) for f in lake_files(core, SINK))
        options = ParquetOptions.of(described.properties)
    finally:
        core.catalog.engine.dispose()
    return PipelineRun(seconds, cpu_s, outcome, table_rows, size), options


def run_baseline(csv_path: Path, out: Path, options: ParquetOptions) -> BaselineRun:
    start, cpu = time.perf_counter(), time.process_time()
    table = pa_csv.read_csv(csv_path)
    read = time.perf_counter()
    pq.write_table(table, out, compression=options.codec, compression_level=options.level)
    end, cpu_s = time.perf_counter(), time.process_time() - cpu
    run = BaselineRun(
        end - start, cpu_s, read - start, end - read, table.num_rows, out.stat().st_size
    )
    out.unlink()
    return run


@contextmanager
def progress_bars() -> Iterator[Progress]:
    progress = Progress(
        SpinnerColumn(),
        TextColumn("[bold]{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        console=console,
        transient=True,
    )
    with progress:
        yield progress


def run_benchmark(args: argparse.Namespace, workdir: Path) -> Results:
    rows = QUICK_ROWS if args.quick and args.rows is None else (args.rows or ROWS)
    with progress_bars() as bars:
        task = bars.add_task("generating CSV", total=rows + WARMUP_ROWS)
        advance = lambda n: bars.advance(task, n)  # noqa: E731
        data = write_orders(workdir / "orders.csv", rows, args.seed, advance)
        warm = write_orders(workdir / "warmup.csv", WARMUP_ROWS, args.seed + 1, advance)
        bars.remove_task(task)
        results = Results(data, args.derive)
        total = 1 + 2 * args.repeats
        overall = bars.add_task("warm-up run (untimed)", total=total)
        options = results.options = warm_up(warm, workdir, args.derive)
        bars.advance(overall)
        yaml_path = workdir / "orders.yaml"
        yaml_path.write_text(pipeline_yaml(data.path, args.derive))
        for rep in range(args.repeats):
            data_dir = workdir / f"data-{rep}"
            start = time.perf_counter()
            prepare(bench_settings(data_dir))
            results.setup_s.append(time.perf_counter() - start)

            def pipeline(rep: int = rep, data_dir: Path = data_dir) -> None:
                bars.update(overall, description=f"pipeline {rep + 1}/{args.repeats}")
                rows_task = bars.add_task("  rows read", total=rows)
                run, _ = run_pipeline(yaml_path, data_dir, lambda n: bars.advance(rows_task, n))
                bars.remove_task(rows_task)
                results.pipeline.append(run)
                shutil.rmtree(data_dir)  # keep the temp folder small on a long run

            def baseline(rep: int = rep) -> None:
                bars.update(overall, description=f"pyarrow {rep + 1}/{args.repeats}")
                out = workdir / f"baseline-{rep}.parquet"
                results.baseline.append(run_baseline(data.path, out, options))

            for run in (pipeline, baseline) if rep % 2 == 0 else (baseline, pipeline):
                run()
                bars.advance(overall)
    return results


def warm_up(data: Generated, workdir: Path, derive: bool) -> ParquetOptions:
    """One small untimed run: imports, caches and first-use costs are paid here, and the
    sink table it creates says which Parquet codec and level the baseline should use."""
    yaml_path = workdir / "warmup.yaml"
    yaml_path.write_text(pipeline_yaml(data.path, derive))
    data_dir = workdir / "data-warmup"
    prepare(bench_settings(data_dir))
    _, options = run_pipeline(yaml_path, data_dir, lambda n: None)
    run_baseline(data.path, workdir / "warmup.parquet", options)
    shutil.rmtree(data_dir)
    return options


# --- checks and report -------------------------------------------------------------


def count_problems(r: Results) -> list[str]:
    """Every way a run's counts are wrong (empty when all are right)."""
    problems = []
    expected_written = r.data.rows - r.data.bad_rows
    for index, run in enumerate(r.pipeline, 1):
        c, where = run.outcome.counts, f"pipeline run {index}"
        if c.read != c.written + c.quarantined + c.filtered:
            problems.append(
                f"{where}: read {c.read} != written {c.written} + quarantined "
                f"{c.quarantined} + filtered {c.filtered}"
            )
        if c.read != r.data.rows:
            problems.append(f"{where}: read {c.read}, the file has {r.data.rows} rows")
        if c.quarantined != r.data.bad_rows:
            problems.append(f"{where}: quarantined {c.quarantined}, generated {r.data.bad_rows}")
        if c.written != expected_written or run.table_rows != c.written:
            problems.append(
                f"{where}: written {c.written}, table holds {run.table_rows}, "
                f"expected {expected_written}"
            )
    for index, base in enumerate(r.baseline, 1):
        if base.rows != r.data.rows:
            problems.append(f"baseline run {index}: read {base.rows}, expected {r.data.rows}")
    return problems


def _rate(rows: int, seconds: float) -> str:
    return f"{rows / seconds:,.0f}"


def ratio(r: Results) -> float:
    """Pipeline rows/s over baseline rows/s (medians of the wall times)."""
    return median([b.seconds for b in r.baseline]) / median([p.seconds for p in r.pipeline])


def figures(r: Results) -> list[Figure]:
    """Rows/s: ratio pipeline/baseline (higher is better); s and MB: pipeline/baseline."""
    walls, base = [p.seconds for p in r.pipeline], [b.seconds for b in r.baseline]
    p_s, b_s = median(walls), median(base)
    p_cpu, b_cpu = median([p.cpu_s for p in r.pipeline]), median([b.cpu_s for b in r.baseline])
    inner = median([p.outcome.duration_s for p in r.pipeline])
    read_s, write_s = (
        median([b.read_s for b in r.baseline]),
        median([b.write_s for b in r.baseline]),
    )
    lake_mb, raw_mb = r.pipeline[0].lake_bytes / 1e6, r.baseline[0].bytes / 1e6
    n = len(walls)
    return [
        Figure("rows/s", _rate(r.data.rows, p_s), _rate(r.data.rows, b_s), b_s / p_s),
        Figure(f"wall s, median of {n}", f"{p_s:.2f}", f"{b_s:.2f}", p_s / b_s),
        Figure(
            f"wall s, best of {n}", f"{min(walls):.2f}", f"{min(base):.2f}", min(walls) / min(base)
        ),
        Figure(
            f"CPU s, median of {n}", f"{p_cpu:.2f}", f"{b_cpu:.2f}", p_cpu / b_cpu, end_section=True
        ),
        Figure("runner s / read_csv s", f"{inner:.2f}", f"{read_s:.2f}"),
        Figure("write_table s", "-", f"{write_s:.2f}", end_section=True),
        Figure("MB of Parquet written", f"{lake_mb:.1f}", f"{raw_mb:.1f}", lake_mb / raw_mb),
    ]


def caption(r: Results) -> str:
    options = r.options.describe() if r.options else "?"
    load = ", ".join(f"{x:.1f}" for x in os.getloadavg())
    derive = "one derive (total = quantity * price)" if r.derive else "no transforms"
    runs = ", ".join(f"{p.seconds:.2f}" for p in r.pipeline)
    bases = ", ".join(f"{b.seconds:.2f}" for b in r.baseline)
    return (
        f"{r.data.rows:,} CSV rows ({r.data.bytes / 1e6:.0f} MB): order_id, customer, region "
        f"({len(REGIONS)} values), quantity, price, ordered_at; {r.data.null_ids:,} empty "
        f"order_id, {r.data.bad_prices:,} prices outside 0..10000. lake: jobs.ingest.run_file, "
        f"parallelism 1, {derive}, not_null + range -> quarantine, append to {SINK}; runner "
        f"s is RunOutcome.duration_s. pyarrow: pa.csv.read_csv + pq.write_table (Parquet "
        f"{options}). Ratio: rows/s lake/pyarrow (higher is better), s and MB lake/pyarrow. "
        f"Wall s per run: lake {runs}; pyarrow {bases}. After an untimed warm-up run; untimed "
        f"setup per repeat (DB schema, catalog) {median(r.setup_s):.2f} s. CPU: all threads "
        f"of this process. {os.cpu_count()} CPUs; load average {load}."
    )


def counts_table(r: Results) -> object:
    c = r.pipeline[0].outcome.counts
    return key_value_table(
        "pipeline run 1: counts",
        {
            "rows read": f"{c.read:,}",
            "written": f"{c.written:,} (table holds {r.pipeline[0].table_rows:,})",
            "quarantined": f"{c.quarantined:,} (generated bad rows: {r.data.bad_rows:,})",
            "filtered": f"{c.filtered:,}",
            "read = written + quarantined + filtered": (
                "holds" if c.read == c.written + c.quarantined + c.filtered else "BROKEN"
            ),
            "warnings": "; ".join(r.pipeline[0].outcome.warnings) or "-",
        },
        ("", ""),
    )


def report(r: Results) -> int:
    console.print(counts_table(r))
    title = "Ingest pipeline vs pyarrow read_csv + write_table"
    console.print(figures_table(title, figures(r), baseline="pyarrow"))
    console.print(caption(r), highlight=False, style="dim")
    problems = count_problems(r)
    for problem in problems:
        console.print(f"[bold red]counts wrong:[/] {problem}", highlight=False, soft_wrap=True)
    target = Target(TARGET_NAME, ratio(r), ">=", GOAL)
    console.print(target.line(), highlight=False, soft_wrap=True)
    return 1 if problems else 0


def _parse(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rows", type=int, default=None, help=f"rows (default {ROWS:,})")
    parser.add_argument("--quick", action="store_true", help=f"smoke run: {QUICK_ROWS:,} rows")
    parser.add_argument("--repeats", type=int, default=5, help="pipeline and baseline repeats")
    parser.add_argument("--derive", action="store_true", help="add total = quantity * price")
    parser.add_argument("--seed", type=int, default=SEED)
    args = parser.parse_args(argv)
    require_positive(parser, args, "rows", "repeats")
    return args


def main(argv: list[str] | None = None) -> int:
    args = _parse(sys.argv[1:] if argv is None else argv)
    configure_logging("WARNING")
    try:
        with tempfile.TemporaryDirectory(prefix="datapunk-bench-ingest-") as tmp:
            results = run_benchmark(args, Path(tmp))
    except (DatapunkError, BenchError) as exc:
        message = exc.message if isinstance(exc, DatapunkError) else str(exc)
        console.print(f"[bold red]benchmark failed:[/] {message}", highlight=False)
        return 2
    except KeyboardInterrupt:
        console.print("[bold red]interrupted[/]")
        return 130
    return report(results)


if __name__ == "__main__":
    sys.exit(main())
