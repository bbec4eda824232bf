"""``datapunk train`` and ``datapunk forge runs``: train on the platform, read run records.

``datapunk train SPEC.yaml`` validates the spec before anything connects (a typo fails
at once, platform or not), joins the running platform's Ray cluster and runs the
training in this process, with a progress bar per trial; Ctrl+C stops it with its state
saved, and running the same command again resumes it. ``datapunk forge runs`` reads the
run records from the platform database (no running platform needed).
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

import typer
from rich.markup import escape
from rich.table import Table

from cluster.cli_support import (
    NULL_CELL,
    cell,
    fail,
    print_json,
    run_cli,
    settings_from,
    stdout_console,
)
from cluster.errors import DatapunkError, NotFoundError
from cluster.settings import Settings

forge_app = typer.Typer(help="Forge: training runs and their trials.", no_args_is_help=True)
runs_app = typer.Typer(help="Training run records.", no_args_is_help=True)
forge_app.add_typer(runs_app, name="runs")
JsonOption = Annotated[bool, typer.Option("--json", help="Machine-readable output.")]
_NULL = NULL_CELL


def train(
    ctx: typer.Context,
    spec: Annotated[Path, typer.Argument(help="Training spec YAML.", exists=True)],
    fresh: Annotated[
        bool, typer.Option(help="Start a new run even though this spec already succeeded.")
    ] = False,
) -> None:
    """Train (or resume) the spec's run on the running platform; register the best model."""
    from actors.forge.spec import load_train_spec
    from jobs.train import connect, outcome_table, run_file, trials_table

    settings = settings_from(ctx)
    try:
        load_train_spec(spec)  # refuse a bad spec before joining anything
        connect(settings)
        record = run_file(spec, settings, fresh=fresh, out=stdout_console())
    except DatapunkError as exc:
        fail(exc)
    out = stdout_console()
    out.print(trials_table(record))
    out.print(outcome_table(record))


def _runs(settings: Settings, run_id: str | None, name: str | None, limit: int) -> Any:
    from cluster.db.forge_store import open_forge_stores

    async def go() -> Any:
        async with open_forge_stores(settings) as stores:
            if run_id is None:
                return await stores.runs.list(limit=limit, name=name)
            record = await stores.runs.get(run_id)
            if record is None:
                known = [r["run_id"] for r in await stores.runs.list(limit=20)]
                raise NotFoundError(
                    kind="training run",
                    name=run_id,
                    fix=f"recent runs: {', '.join(known) or 'none'} (`datapunk forge runs ls`)",
                )
            return record

    return run_cli(go())


@runs_app.command("ls")
def runs_ls(
    ctx: typer.Context,
    name: Annotated[str | None, typer.Option(help="Only runs of this spec name.")] = None,
    limit: Annotated[int, typer.Option(help="At most this many, newest first.")] = 50,
    as_json: JsonOption = False,
) -> None:
    """Recent training runs, newest first."""
    records = _runs(settings_from(ctx), None, name, limit)
    if as_json:
        print_json(records)
        return
    table = Table(title="training runs", header_style="bold")
    for column in ("run", "state", "table", "snapshot", "trials", "best", "model", "updated"):
        table.add_column(column)
    colours = {"succeeded": "green", "failed": "red", "interrupted": "yellow"}
    for r in records:
        best = r.get("best") or {}
        metric = (r.get("spec") or {}).get("objective", {}).get("metric", "val_loss")
        score = (best.get("metrics") or {}).get(metric)
        trials = (r.get("results") or {}).get("trials") or []
        model = f"{r['model_name']} v{r['model_version']}" if r.get("model_name") else None
        table.add_row(
            escape(r["run_id"]),
            f"[{colours.get(r['state'], 'cyan')}]{r['state']}[/]",
            escape(r["lake_table"]),
            cell(r.get("snapshot_id")),
            str(len(trials)),
            f"{metric}={cell(score)}" if score is not None else _NULL,
            cell(model),
            cell(str(r.get("updated_at", ""))[:19].replace("T", " ")),
        )
    stdout_console().print(table)


@runs_app.command("show")
def runs_show(ctx: typer.Context, run_id: str, as_json: JsonOption = False) -> None:
    """One run: its trials with their last metrics, the best trial and the model."""
    from jobs.train import outcome_table, trials_table

    record = _runs(settings_from(ctx), run_id, None, 1)
    if as_json:
        print_json(record)
        return
    out = stdout_console()
    out.print(trials_table(record))
    out.print(outcome_table(record))
