"""Feature drift of a served model: its prediction log against its training snapshot.

``python -m jobs.drift MODEL [--alias production | --version N] [--since ISO]
[--report ns.table] [--bins 10]``, directly or as ``ray job submit --working-dir . --
python -m jobs.drift ...``.

Reads the features the version was served with (its prediction-log table, rows of that
version since ``--since``), the Lake snapshot it was trained on (table and snapshot id
from the version's lineage, by time travel), computes the PSI of every signature input
(``actors/cortex/psi.py``) and APPENDS one row per feature to the report table (created
on first use) with the model, version, time, training snapshot and the served window.
Prints the report; exits 2 on a typed error, naming the value and the fix.

Both reads are small (one feature set, one log window), so they go through the embedded
Lake service in this process: Ray Data's fixed start-up cost would dominate them.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc
from rich.table import Table

from actors.cortex.predlog import feature_columns, lake_append, log_table_name
from actors.cortex.psi import DRIFT, MODERATE, NoServedRowsError, drift_report
from actors.cortex.signature import input_names
from actors.forge.registry import registry_from_settings
from actors.lake.core import LakeCore
from actors.lake.errors import TableNotFoundError
from actors.lake.service import LakeService
from actors.lake.specs import parse_table_name
from cluster.console import console
from cluster.errors import DatapunkError, InvalidInputError
from cluster.logging import configure_logging
from cluster.settings import Settings, load_settings

DEFAULT_REPORT_TABLE = "cortex.drift_reports"
_TS = pa.timestamp("us", tz="UTC")
CONTEXT_SCHEMA = pa.schema(
    [
        pa.field("model", pa.string()),
        pa.field("version", pa.int64()),
        pa.field("computed_at", _TS),
        pa.field("training_table", pa.string()),
        pa.field("training_snapshot_id", pa.int64()),
        pa.field("served_since", _TS),
        pa.field("served_first_ts", _TS),
        pa.field("served_last_ts", _TS),
    ]
)


@dataclass(frozen=True)
class DriftRequest:
    """What ``python -m jobs.drift`` was asked; ``ref`` is a version or an alias."""

    model: str
    ref: int | str = "production"
    since: datetime | None = None
    report_table: str = DEFAULT_REPORT_TABLE
    bins: int = 10


@dataclass(frozen=True)
class DriftOutcome:
    """The rows appended to ``report_table`` and the snapshot that holds them."""

    log_table: str
    report_table: str
    rows: pa.Table
    snapshot_id: int | None


def parse_since(value: str | None) -> datetime | None:
    """``--since`` as an aware UTC time; ISO 8601, naive means UTC."""
    if value is None:
        return None
    try:
        parsed = datetime.fromisoformat(value)
    except ValueError:
        raise InvalidInputError(
            field="--since", value=value, allowed="an ISO 8601 time, e.g. 2026-11-26T10:00:00Z"
        ) from None
    return (parsed if parsed.tzinfo else parsed.replace(tzinfo=UTC)).astimezone(UTC)


def _training_source(record: dict[str, Any]) -> tuple[str, int]:
    lineage = record.get("lineage") or {}
    table, snapshot = lineage.get("table"), lineage.get("snapshot_id")
    if not isinstance(table, str) or isinstance(snapshot, bool) or not isinstance(snapshot, int):
        raise InvalidInputError(
            field=f"lineage of {record['name']!r} version {record['version']}",
            value={"table": table, "snapshot_id": snapshot},
            allowed="a Lake table and snapshot id to compare with; register versions "
            "from Forge runs, which record them",
        )
    return table, snapshot


async def _served(
    lake: LakeService, log_table: str, record: dict[str, Any], since: datetime | None
) -> pa.Table:
    """The logged rows of the version (since ``since``), features under signature names."""
    model, version = str(record["name"]), int(record["version"])
    shown = since.isoformat() if since else None
    columns = feature_columns(input_names(record["signature"]))
    where = f"version = {version}" + (f" and ts >= '{since.isoformat()}'" if since else "")
    try:
        rows = await lake.scan(log_table, columns=[*columns.values(), "ts"], filter=where)
    except TableNotFoundError:
        raise NoServedRowsError(
            table=log_table, model=model, version=version, since=shown, reason="does not exist"
        ) from None
    if rows.num_rows == 0:
        raise NoServedRowsError(
            table=log_table, model=model, version=version, since=shown, reason="has no rows"
        )
    names = {column: name for name, column in columns.items()}
    return rows.rename_columns([names.get(c, c) for c in rows.column_names])


def report_rows(
    report: pa.Table,
    *,
    record: dict[str, Any],
    computed_at: datetime,
    training: tuple[str, int],
    since: datetime | None,
    served_ts: pa.ChunkedArray,
) -> pa.Table:
    """``drift_report``'s rows with the context every report row carries
    (``CONTEXT_SCHEMA``): which version, when, against which snapshot, which window."""
    n = report.num_rows
    bounds = pc.min_max(served_ts)
    context = {
        "model": [str(record["name"])] * n,
        "version": [int(record["version"])] * n,
        "computed_at": [computed_at] * n,
        "training_table": [training[0]] * n,
        "training_snapshot_id": [training[1]] * n,
        "served_since": [since] * n,
        "served_first_ts": [bounds["min"].as_py()] * n,
        "served_last_ts": [bounds["max"].as_py()] * n,
    }
    for field in CONTEXT_SCHEMA:
        report = report.append_column(field, pa.array(context[field.name], field.type))
    return report


async def run_drift(
    settings: Settings,
    request: DriftRequest,
    now: Callable[[], datetime] = lambda: datetime.now(UTC),
) -> DriftOutcome:
    """Compute the version's drift report and append it to the report table."""
    report_table = parse_table_name(request.report_table).full
    async with registry_from_settings(settings) as registry:
        record = await registry.version(request.model, request.ref)
    features = input_names(record["signature"])
    training_source = _training_source(record)
    lake = LakeService(LakeCore(settings, 0))
    log_table = log_table_name(settings.cortex.log_namespace, request.model)
    served = await _served(lake, log_table, record, request.since)
    training = await lake.scan(training_source[0], columns=features, snapshot_id=training_source[1])
    report = drift_report(training, served, features, bins=request.bins)
    rows = report_rows(
        report,
        record=record,
        computed_at=now(),
        training=training_source,
        since=request.since,
        served_ts=served.column("ts"),
    )
    await lake_append(lake)(report_table, rows)
    snapshot = await asyncio.to_thread(lake.core.resolve_snapshot, report_table)
    return DriftOutcome(log_table, report_table, rows, snapshot)


def report_table(outcome: DriftOutcome) -> Table:
    """One line per feature, its PSI and status coloured by severity."""
    first = outcome.rows.slice(0, 1).to_pylist()[0]
    table = Table(
        title=f"drift of {first['model']} v{first['version']}: served "
        f"{first['served_first_ts']:%Y-%m-%d %H:%M} to {first['served_last_ts']:%Y-%m-%d %H:%M} "
        f"vs {first['training_table']} @ snapshot {first['training_snapshot_id']}",
        caption=f"appended to {outcome.report_table} (snapshot {outcome.snapshot_id})",
        header_style="bold",
    )
    for column in ("feature", "psi", "training rows", "served rows", "status"):
        table.add_column(column, justify="left" if column in ("feature", "status") else "right")
    colours = {DRIFT: "red", MODERATE: "yellow"}
    for row in outcome.rows.to_pylist():
        colour = colours.get(row["status"], "green")
        table.add_row(
            row["feature"],
            f"{row['psi']:.4f}",
            f"{row['training_rows']:,}",
            f"{row['served_rows']:,}",
            f"[{colour}]{row['status']}[/]",
        )
    return table


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m jobs.drift", description=__doc__)
    parser.add_argument("model", help="Registered model name.")
    which = parser.add_mutually_exclusive_group()
    which.add_argument("--alias", default=None, help="Alias of the version (production).")
    which.add_argument("--version", type=int, default=None, help="Version number.")
    parser.add_argument("--since", default=None, help="Served rows from this ISO time on.")
    parser.add_argument("--report", default=DEFAULT_REPORT_TABLE, help="Report Lake table.")
    parser.add_argument("--bins", type=int, default=10, help="PSI bins (quantiles).")
    return parser


def main(argv: list[str] | None = None, *, settings: Settings | None = None) -> int:
    args = _parser().parse_args(argv)
    configure_logging("WARNING")
    ref: int | str = args.version if args.version is not None else args.alias or "production"
    try:
        request = DriftRequest(args.model, ref, parse_since(args.since), args.report, args.bins)
        outcome = asyncio.run(run_drift(settings or load_settings(), request))
    except DatapunkError as exc:
        console.print(f"[red]error:[/] {exc.message}", highlight=False)
        return 2
    console.print(report_table(outcome))
    return 0


if __name__ == "__main__":
    sys.exit(main())
