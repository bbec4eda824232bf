"""Benchmark: Lake append, scan, SQL and commit latency versus raw pyarrow and DuckDB.

One run, one seeded table (int64 id, float64 value, string category with 1000 random
values, timestamp[us] ts), a private data dir in a temp folder:

1. **append**: ``LakeCore.append`` of every row into a fresh unpartitioned table (SQLite
   catalog) vs ``pyarrow.parquet.write_table`` with the codec and level that LakeCore
   set on the table (``write.parquet.compression-codec`` / ``-level``);
2. **scan**: ``LakeCore.scan`` of the whole table vs ``pq.read_table`` of the file the
   baseline wrote in (1), both warm in the page cache, both fully materialised;
3. **GROUP BY**: ``LakeService.sql`` with no result cache vs DuckDB ``read_parquet`` over
   the table's own data files (from the scan plan), medians of several runs;
4. **commits**: 100-row appends (20 warm-up, 200 timed) on a SQLite catalog and on a
   temporary PostgreSQL database, p50/p99, next to a plain 100-row Parquet write.

Prints a table of every figure, then one line per target, last:
``target NAME: MEASURED (goal OP VALUE) met|missed``.

Run: ``python bench/lake.py [--rows N] [--quick] [--repeats R] [--scan-repeats R]
[--sql-repeats R] [--commits N] [--skip-postgres] [--workdir DIR]``.
Exit 0 whether the goals are met or not; 1 when the PostgreSQL phase could not run;
2 when the benchmark could not run.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path

import psycopg2
import pyarrow as pa

from cluster.console import console, stepper
from cluster.errors import DatapunkError
from cluster.logging import configure_logging
from cluster.settings import Settings, load_settings

if __package__ in (None, ""):  # `python bench/lake.py`: make the bench package importable
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from actors.lake.core import LakeCore
from bench._lake_phases import (
    CATEGORIES,
    AppendResult,
    BenchError,
    CommitResult,
    ScanResult,
    SqlResult,
    Step,
    make_data,
    measure_append,
    measure_commits,
    measure_scan,
    measure_sql,
    temporary_database,
)
from bench._targets import Figure, Target, figures_table, median, percentile, require_positive

ROWS, QUICK_ROWS, SEED = 5_000_000, 500_000, 20_260_101
PG_ADMIN_URL = "postgresql://postgres@127.0.0.1:5432/postgres"


@dataclass
class Results:
    """Every phase's measurements, for the report."""

    rows: int
    append: AppendResult
    scan: ScanResult
    sql: SqlResult
    commits: list[CommitResult]
    commit_rows: int


def bench_settings(data_dir: Path, catalog_url: str | None, max_result_bytes: int) -> Settings:
    """Private data dir; the catalog given (None: SQLite in data_dir); no platform DB."""
    return load_settings(
        data_dir=data_dir,
        catalog_url=catalog_url,
        database_url=None,
        lake={"max_result_bytes": max_result_bytes},
    )


def run_benchmark(args: argparse.Namespace, workdir: Path) -> Results:
    rows = QUICK_ROWS if args.quick and args.rows is None else (args.rows or ROWS)
    commit_steps = args.warmup_commits + args.commits
    total = 1 + 2 * args.repeats + args.scan_repeats + args.sql_repeats + 2 * commit_steps
    with stepper(total, "generating data") as step:
        data = make_data(rows, args.seed)
        step(f"generated {rows:,} rows")
        # The whole table must fit a scan result: raise the guard, not the table's size.
        limit = max(512 * 1024 * 1024, 4 * data.nbytes)
        core = LakeCore(bench_settings(workdir / "sqlite", None, limit), 0)
        append = measure_append(core, data, workdir / "pyarrow", args.repeats, step)
        assert append.pyarrow_file is not None
        scan = measure_scan(core, append.pyarrow_file, rows, args.scan_repeats, step)
        sql = measure_sql(core, args.sql_repeats, step)
        core.catalog.engine.dispose()
        options = dict(
            warmup=args.warmup_commits, commits=args.commits, batch_rows=args.commit_rows
        )
        sqlite_settings = bench_settings(workdir / "commits-sqlite", None, limit)
        commits = [
            measure_commits(
                sqlite_settings, data, workdir / "raw-sqlite", label="SQLite", step=step, **options
            )
        ]
        commits.append(_postgres_commits(args, data, workdir, limit, step, options))
    return Results(rows, append, scan, sql, commits, args.commit_rows)


def _postgres_commits(
    args: argparse.Namespace,
    data: pa.Table,
    workdir: Path,
    limit: int,
    step: Step,
    options: dict[str, int],
) -> CommitResult:
    if args.skip_postgres:
        return CommitResult(catalog="PostgreSQL", error="skipped (--skip-postgres)")
    try:
        with temporary_database(args.postgres_admin_url) as url:
            settings = bench_settings(workdir / "commits-pg", url, limit)
            return measure_commits(
                settings, data, workdir / "raw-pg", label="PostgreSQL", step=step, **options
            )
    except (DatapunkError, OSError, psycopg2.Error) as exc:  # report; keep the other figures
        message = exc.message if isinstance(exc, DatapunkError) else str(exc)
        return CommitResult(catalog="PostgreSQL", error=message.splitlines()[0])


# --- report --------------------------------------------------------------------------


def _rate(rows: int, seconds: float) -> str:
    return f"{rows / seconds:,.0f}"


def _ms(seconds: float) -> str:
    return f"{seconds * 1000:,.1f}"


def figures(r: Results) -> list[Figure]:
    """Rows/s rows: ratio lake/baseline throughput (higher is better); time rows (s, ms):
    ratio lake/baseline time (lower is better)."""
    a, s, q = r.append, r.scan, r.sql
    la, pa_ = median(a.lake_s), median(a.pyarrow_s)
    ls, ps, pls = median(s.lake_s), median(s.pyarrow_s), median(s.pyarrow_lake_files_s)
    lq, dq, bq, bd = median(q.lake_s), median(q.duckdb_s), min(q.lake_s), min(q.duckdb_s)
    mb_lake, mb_raw = a.lake_bytes / 1e6, a.pyarrow_bytes / 1e6
    rows = [
        Figure("append rows/s", _rate(r.rows, la), _rate(r.rows, pa_), pa_ / la),
        Figure(f"append s (median of {len(a.lake_s)})", f"{la:.3f}", f"{pa_:.3f}", la / pa_),
        Figure("append MB written", f"{mb_lake:.1f}", f"{mb_raw:.1f}", mb_lake / mb_raw, "", True),
        Figure("full scan rows/s", _rate(r.rows, ls), _rate(r.rows, ps), ps / ls),
        Figure(f"full scan s (median of {len(s.lake_s)})", f"{ls:.3f}", f"{ps:.3f}", ls / ps),
        Figure(
            "full scan s, vs read_table(lake's files)",
            f"{ls:.3f}",
            f"{pls:.3f}",
            ls / pls,
            end_section=True,
        ),
        Figure(f"GROUP BY ms (median of {len(q.lake_s)})", _ms(lq), _ms(dq), lq / dq),
        Figure(
            f"GROUP BY ms (best of {len(q.lake_s)})", _ms(bq), _ms(bd), bq / bd, end_section=True
        ),
    ]
    for c in r.commits:
        if c.error:
            rows.append(Figure(f"commit, {c.catalog}", "n/a", end_section=True))
            continue
        for pct in (50, 99):
            lake, raw = percentile(c.lake_ms, pct), percentile(c.pyarrow_ms, pct)
            rows.append(
                Figure(
                    f"commit p{pct} ms, {c.catalog}",
                    f"{lake:.1f}",
                    f"{raw:.2f}",
                    lake / raw,
                    end_section=pct == 99,
                )
            )
    return rows


def caption(r: Results) -> str:
    options = r.append.options.describe() if r.append.options else "?"
    timed = next((len(c.lake_ms) for c in r.commits if not c.error), 0)
    load = ", ".join(f"{x:.1f}" for x in os.getloadavg())
    return (
        f"{r.rows:,} rows: id int64, value float64, category string ({CATEGORIES} values), "
        f"ts timestamp\\[us]; Parquet {options}. Baselines: append pq.write_table; scan "
        f"pq.read_table of that file (and of the lake's own data files); GROUP BY DuckDB "
        f"read_parquet over the table's {r.sql.files} data file(s); commit: "
        f"{r.commit_rows}-row append, {timed} timed, vs pq.write_table of the same rows. "
        "Ratio: rows/s lake/baseline (higher is better), s and ms lake/baseline (lower is "
        f"better). {os.cpu_count()} CPUs; load average {load}."
    )


def targets(r: Results) -> list[Target]:
    a, s, q = r.append, r.scan, r.sql
    by_catalog = {c.catalog: c for c in r.commits}

    def p99(catalog: str) -> float | None:
        c = by_catalog.get(catalog)
        return None if c is None or c.error else percentile(c.lake_ms, 99)

    return [
        Target("lake_append_vs_pyarrow", median(a.pyarrow_s) / median(a.lake_s), ">=", 0.8),
        Target("lake_scan_vs_pyarrow", median(s.pyarrow_s) / median(s.lake_s), ">=", 0.8),
        Target("lake_sql_groupby_vs_duckdb", median(q.lake_s) / median(q.duckdb_s), "<=", 1.2),
        Target("lake_commit_p99_sqlite_ms", p99("SQLite"), "<=", 50, digits=1),
        Target("lake_commit_p99_postgres_ms", p99("PostgreSQL"), "<=", 50, digits=1),
    ]


def report(r: Results, args: argparse.Namespace) -> int:
    """The figures table, any phase that could not run, then the target lines, last."""
    title = "Lake vs raw pyarrow and DuckDB"
    console.print(figures_table(title, figures(r), caption=caption(r)))
    failed = [c for c in r.commits if c.error and not args.skip_postgres]
    for c in failed:
        console.print(
            f"[bold red]{c.catalog} phase did not run:[/] {c.error}",
            highlight=False,
            soft_wrap=True,
        )
    for target in targets(r):
        console.print(target.line(), highlight=False, soft_wrap=True)
    return 1 if failed else 0


def _parse(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rows", type=int, default=None, help=f"rows (default {ROWS:,})")
    parser.add_argument("--quick", action="store_true", help=f"smoke run: {QUICK_ROWS:,} rows")
    parser.add_argument("--repeats", type=int, default=5, help="append repeats")
    parser.add_argument("--scan-repeats", type=int, default=9, help="full scan repeats")
    parser.add_argument("--sql-repeats", type=int, default=7, help="GROUP BY repeats")
    parser.add_argument("--commits", type=int, default=200, help="timed commits per catalog")
    parser.add_argument("--warmup-commits", type=int, default=20)
    parser.add_argument("--commit-rows", type=int, default=100, help="rows per commit")
    parser.add_argument("--seed", type=int, default=SEED)
    parser.add_argument(
        "--postgres-admin-url",
        default=PG_ADMIN_URL,
        help="where to CREATE/DROP the temporary catalog database",
    )
    parser.add_argument("--skip-postgres", action="store_true")
    parser.add_argument(
        "--workdir",
        type=Path,
        default=None,
        help="keep the data dir here (an empty or new folder) for inspection",
    )
    args = parser.parse_args(argv)
    require_positive(
        parser, args, "rows", "repeats", "scan_repeats", "sql_repeats", "commits", "commit_rows"
    )
    return args


def main(argv: list[str] | None = None) -> int:
    args = _parse(sys.argv[1:] if argv is None else argv)
    configure_logging("WARNING")
    try:
        if args.workdir is not None:
            args.workdir.mkdir(parents=True, exist_ok=True)
            if any(args.workdir.iterdir()):
                raise BenchError(f"--workdir {args.workdir} is not empty")
            results = run_benchmark(args, args.workdir.resolve())
        else:
            with tempfile.TemporaryDirectory(prefix="datapunk-bench-lake-") as tmp:
                results = run_benchmark(args, Path(tmp))
    except (DatapunkError, BenchError) as exc:
        message = exc.message if isinstance(exc, DatapunkError) else str(exc)
        console.print(f"[bold red]benchmark failed:[/] {message}", highlight=False)
        return 2
    except KeyboardInterrupt:
        console.print("[bold red]interrupted[/]")
        return 130
    return report(results, args)


if __name__ == "__main__":
    sys.exit(main())
