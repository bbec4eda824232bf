"""Run a training spec: ``python -m jobs.train SPEC.yaml [--fresh]``.

The same entry serves ``datapunk train`` and ``ray job submit --working-dir . --
python -m jobs.train SPEC.yaml`` (and so ``POST /api/v1/forge/runs``, which submits
it). Shows one Rich progress bar per trial, then the run's trials and its registered
model. Resubmitting a spec resumes its run; ``--fresh`` starts another once it has
succeeded. Exits 2 on a typed error, naming what to fix.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.markup import escape
from rich.progress import BarColumn, Progress, SpinnerColumn, TextColumn, TimeElapsedColumn
from rich.table import Table

from actors.forge.runner import run_training
from actors.forge.spec import TrainSpec, load_train_spec
from cluster.console import console, key_value_table
from cluster.errors import DatapunkError
from cluster.logging import configure_logging
from cluster.settings import Settings, load_settings
from jobs import join_cluster


class TrialProgress:
    """A Rich progress display: a line per run step, a bar per trial (epochs)."""

    def __init__(self, spec: TrainSpec, out: Console = console) -> None:
        self.spec = spec
        self.out = out
        self.progress = Progress(
            SpinnerColumn(),
            TextColumn("[bold]{task.description}"),
            BarColumn(),
            TextColumn("epoch {task.completed:.0f}/{task.total:.0f}"),
            TextColumn("{task.fields[status]} {task.fields[score]}"),
            TimeElapsedColumn(),
            console=out,
        )
        self._tasks: dict[str, Any] = {}

    def __enter__(self) -> TrialProgress:
        self.progress.start()
        return self

    def __exit__(self, *_exc: object) -> None:
        self.progress.stop()

    def __call__(self, event: dict[str, Any]) -> None:
        kind = event["event"]
        if kind == "pinned":
            again = "resuming" if event["resumed"] else "starting"
            self.out.print(
                f"{again} run [bold]{event['run_id']}[/] on {self.spec.data.table} "
                f"snapshot {event['snapshot_id']}"
            )
        elif kind == "tuning":
            restored = " (search state restored)" if event["restored"] else ""
            self.out.print(
                f"{event['train_rows']} training rows, {event['validation_rows']} held out"
                f"{restored}"
            )
        elif kind == "done" and event["already"]:
            self.out.print(
                f"run [bold]{event['run_id']}[/] already succeeded; nothing to train "
                "(--fresh starts a new run)"
            )
        elif "trial_id" in event:
            self._trial(event)

    def _trial(self, event: dict[str, Any]) -> None:
        trial_id = event["trial_id"]
        if trial_id not in self._tasks:
            params = ", ".join(f"{k}={v}" for k, v in (event.get("params") or {}).items())
            label = escape(f"{trial_id} {params}".strip())
            self._tasks[trial_id] = self.progress.add_task(
                label, total=self.spec.epochs, status="", score=""
            )
        metric = self.spec.objective.metric
        value = (event.get("metrics") or {}).get(metric)
        score = f"{metric}={value:.4g}" if isinstance(value, float) else ""
        self.progress.update(
            self._tasks[trial_id],
            completed=event.get("epoch", 0),
            status=event.get("status", ""),
            score=score,
        )


def run_file(
    path: Path,
    settings: Settings,
    *,
    fresh: bool = False,
    created_by: str | None = None,
    out: Console = console,
) -> dict[str, Any]:
    """Load, validate and run the spec at ``path`` with a progress display."""
    spec = load_train_spec(path)
    with TrialProgress(spec, out) as progress:
        return run_training(settings, spec, progress, created_by, fresh=fresh)


def trials_table(record: dict[str, Any]) -> Table:
    """The run's trials: status, parameters, epochs and last metrics."""
    trials = (record.get("results") or {}).get("trials") or []
    names: list[str] = []
    for trial in trials:
        names += [n for n in (trial.get("metrics") or {}) if n not in names]
    best = (record.get("best") or {}).get("trial_id")
    table = Table(title=f"run {record['run_id']}: {record['state']}", header_style="bold")
    for column in ("trial", "status", "params", "epoch", *names):
        table.add_column(column)
    for trial in trials:
        metrics = trial.get("metrics") or {}
        marker = " *" if trial["trial_id"] == best else ""
        params = ", ".join(f"{k}={v}" for k, v in (trial.get("params") or {}).items())
        table.add_row(
            trial["trial_id"] + marker,
            str(trial.get("status", "")),
            escape(params) or "-",
            str(trial.get("epoch", 0)),
            *(_number(metrics.get(n)) for n in names),
        )
    return table


def outcome_table(record: dict[str, Any]) -> Table:
    """The run's outcome: state, snapshot, best trial and registered model."""
    best = record.get("best") or {}
    model = record.get("model_name")
    rows = {
        "state": str(record["state"]),
        "table": f"{record['lake_table']} @ snapshot {record['snapshot_id']}",
        "best trial": str(best.get("trial_id", "-")),
        "best metrics": ", ".join(
            f"{k}={_number(v)}" for k, v in (best.get("metrics") or {}).items()
        )
        or "-",
        "model": f"{model} v{record['model_version']}" if model else "-",
        "experiment": escape(str(record.get("experiment_path") or "-")),
        "error": escape(str(record.get("error") or "-")),
    }
    return key_value_table(f"run {record['run_id']}", rows, ("", ""))


def _number(value: Any) -> str:
    return f"{value:.4g}" if isinstance(value, int | float) else "-"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m jobs.train", description=__doc__)
    parser.add_argument("spec", type=Path, help="Training spec YAML.")
    parser.add_argument("--fresh", action="store_true", help="New run after a success.")
    parser.add_argument("--created-by", default=None, help="Who asked (the API key id).")
    args = parser.parse_args(argv)
    configure_logging("WARNING")
    try:
        settings = load_settings()
        connect(settings)
        record = run_file(args.spec, settings, fresh=args.fresh, created_by=args.created_by)
    except DatapunkError as exc:
        console.print(f"[red]error:[/] {exc.message}", highlight=False)
        return 2
    console.print(trials_table(record))
    console.print(outcome_table(record))
    return 0


def connect(settings: Settings) -> None:
    """Join the Ray job's cluster or the running platform's (``datapunk train`` calls
    this too); raise ``PlatformStateError`` saying how to start one if there is none."""
    join_cluster(
        settings,
        no_cluster=(
            "training needs a running platform (its Ray cluster); start it with "
            "`datapunk up`, or submit the spec as a Ray job"
        ),
    )


if __name__ == "__main__":
    sys.exit(main())
