"""``datapunk ingest`` and ``datapunk runs``: run pipelines and read their run records."""

from __future__ import annotations

import json
import sys
from dataclasses import asdict
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.progress import Progress, SpinnerColumn, TextColumn, TimeElapsedColumn
from rich.table import Table

from cluster.cli_support import fail, settings_from
from cluster.console import console
from cluster.errors import DatapunkError

runs_app = typer.Typer(no_args_is_help=True, help="Pipeline run records.")


def ingest(
    ctx: typer.Context,
    pipeline: Annotated[Path, typer.Argument(help="Pipeline YAML file.", exists=True)],
    parallel: Annotated[
        int, typer.Option(help="Ray tasks for the plan's splits (needs `datapunk up`).")
    ] = 1,
) -> None:
    """Run a pipeline once: new inputs only, one Lake snapshot, a run record."""
    from jobs.ingest import outcome_table, run_file

    settings = settings_from(ctx)
    if parallel > 1:
        _join_cluster(settings)
    progress = Progress(
        SpinnerColumn(),
        TextColumn("[bold]ingesting {task.fields[name]}"),
        TextColumn("{task.completed:,} rows"),
        TimeElapsedColumn(),
        console=console,
        transient=True,
    )
    try:
        with progress:
            task = progress.add_task("ingest", total=None, name=pipeline.name)
            outcome = run_file(
                pipeline,
                settings,
                parallelism=parallel,
                progress=lambda rows: progress.advance(task, rows),
            )
    except DatapunkError as exc:
        fail(exc)
    console.print(outcome_table(outcome))


def _join_cluster(settings: Any) -> None:
    from cluster import platform
    from cluster.platform_state import PlatformState

    state = PlatformState.load(settings.state_path)
    if state is None:
        from cluster.errors import PlatformStateError

        fail(PlatformStateError("--parallel needs a running platform; run `datapunk up`"))
    platform.connect(settings, state.gcs_address)


async def _state(settings: Any) -> Any:
    from datetime import UTC, datetime

    from actors.ingest.state import SqlIngestState
    from cluster.db.engine import create_engine, session_factory
    from cluster.db.migrate import ensure_schema

    await ensure_schema(settings)
    engine = create_engine(settings)
    return engine, SqlIngestState(session_factory(engine), lambda: datetime.now(UTC))


def _records(ctx: typer.Context, pipeline: str | None, run_id: str | None) -> list[Any]:
    import asyncio

    async def go() -> list[Any]:
        engine, state = await _state(settings_from(ctx))
        try:
            if run_id is not None:
                return [await state.get_run(run_id)]
            return list(await state.list_runs(pipeline))
        finally:
            await engine.dispose()

    try:
        return asyncio.run(go())
    except DatapunkError as exc:
        fail(exc)


@runs_app.command("ls")
def runs_ls(
    ctx: typer.Context,
    pipeline: Annotated[str | None, typer.Option(help="Only this pipeline's runs.")] = None,
    as_json: Annotated[bool, typer.Option("--json")] = False,
) -> None:
    """Recent runs, newest first."""
    records = _records(ctx, pipeline, None)
    if as_json:
        sys.stdout.write(json.dumps([asdict(r) for r in records], default=str, indent=2) + "\n")
        return
    table = Table(title="pipeline runs", header_style="bold")
    for column in (
        "run",
        "pipeline",
        "status",
        "read",
        "written",
        "quarantined",
        "filtered",
        "snapshot",
        "seconds",
    ):
        table.add_column(column)
    for r in records:
        c = r.counts
        counts = (
            [str(x) for x in (c.read, c.written, c.quarantined, c.filtered)] if c else ["-"] * 4
        )
        colour = {"succeeded": "green", "failed": "red"}.get(r.status, "yellow")
        table.add_row(
            r.run_id,
            r.pipeline,
            f"[{colour}]{r.status}[/]",
            *counts,
            str(r.snapshot_id or "-"),
            f"{r.duration_s or 0:.2f}",
        )
    console.print(table)


@runs_app.command("show")
def runs_show(ctx: typer.Context, run_id: str) -> None:
    """One run: counts, snapshot, lineage and error."""
    record = _records(ctx, None, run_id)[0]
    sys.stdout.write(json.dumps(asdict(record), default=str, indent=2) + "\n")
