"""`datapunk train` and `datapunk forge runs` through Typer's test runner, no Ray: a bad
spec or a missing platform is one error line; run records print per trial."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path
from typing import Any

import pytest
import ray
from typer.testing import CliRunner

from actors.forge.spec import config_hash, load_train_spec, run_id_for
from cluster.cli import app
from cluster.db.forge_store import open_forge_stores
from cluster.settings import load_settings
from tests.unit.test_forge_spec import EXAMPLE

TRIALS = [
    {
        "trial_id": "a_00000",
        "status": "completed",
        "params": {"optimizer.lr": 0.003, "model.hidden": [32]},
        "epoch": 30,
        "metrics": {"val_loss": 0.41, "rmse": 53.2, "mae": 43.0, "r2": 0.49},
    },
    {
        "trial_id": "a_00001",
        "status": "stopped",
        "params": {"optimizer.lr": 0.0007, "model.hidden": [64, 32]},
        "epoch": 5,
        "metrics": {"val_loss": 0.9, "rmse": 71.5, "mae": 60.1, "r2": 0.1},
    },
]


@pytest.fixture
def runner(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> CliRunner:
    monkeypatch.chdir(tmp_path)  # no configs/datapunk.yaml here
    monkeypatch.setenv("DATAPUNK_DATA_DIR", str(tmp_path / "state"))
    monkeypatch.setenv("COLUMNS", "200")  # Rich tables at full width, cells unwrapped
    return CliRunner()


def one_error_line(result: Any) -> str:
    assert result.exit_code == 2, result.output
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), result.stderr
    line: str = lines[0]
    return line


def test_a_bad_spec_fails_before_anything_connects(runner: CliRunner, tmp_path: Path) -> None:
    spec = tmp_path / "bad.yaml"
    spec.write_text("name: demo\ntask: regresion\n")
    line = one_error_line(runner.invoke(app, ["train", str(spec)], catch_exceptions=False))
    assert "line 2, task" in line and "data: is required" in line


def test_training_needs_a_running_platform(
    runner: CliRunner, monkeypatch: pytest.MonkeyPatch
) -> None:
    # As in a fresh process: not in a Ray job, not connected (a session that ran the Ray
    # tests first has a cluster up).
    monkeypatch.setattr(ray, "is_initialized", lambda: False)
    monkeypatch.delenv("RAY_ADDRESS", raising=False)
    monkeypatch.delenv("RAY_JOB_ID", raising=False)
    line = one_error_line(runner.invoke(app, ["train", str(EXAMPLE)], catch_exceptions=False))
    assert "training needs a running platform" in line and "datapunk up" in line


def _seed(data_dir: Path) -> str:
    spec = load_train_spec(EXAMPLE)
    run_id = run_id_for(spec)

    async def go() -> None:
        async with open_forge_stores(load_settings(data_dir=data_dir)) as stores:
            await stores.runs.start(
                run_id,
                name=spec.name,
                spec=spec.model_dump(mode="json"),
                config_hash=config_hash(spec),
                experiment_path=str(data_dir / "forge" / "experiments" / run_id),
                lake_table=spec.data.table,
                snapshot_id=42,
            )
            best = {"trial_id": "a_00000", "metrics": {"rmse": 53.2}, "epoch": 30}
            await stores.runs.update(
                run_id,
                state="succeeded",
                results={"trials": TRIALS},
                best=best,
                model_name="diabetes-mlp",
                model_version=3,
            )

    asyncio.run(go())
    return run_id


def test_runs_list_and_show_per_trial_metrics(runner: CliRunner, tmp_path: Path) -> None:
    run_id = _seed(tmp_path / "state")
    listed = runner.invoke(app, ["forge", "runs", "ls"], catch_exceptions=False)
    assert listed.exit_code == 0, listed.output
    assert run_id in listed.stdout and "succeeded" in listed.stdout
    assert "rmse=53.2" in listed.stdout and "diabetes-mlp v3" in listed.stdout

    shown = runner.invoke(app, ["forge", "runs", "show", run_id], catch_exceptions=False)
    assert shown.exit_code == 0, shown.output
    for text in (
        "a_00000 *",
        "a_00001",
        "stopped",
        "71.5",
        "model.hidden=[64, 32]",
        "@ snapshot 42",
    ):
        assert text in shown.stdout, text

    as_json = runner.invoke(app, ["forge", "runs", "show", run_id, "--json"])
    record = json.loads(as_json.stdout)
    assert record["results"]["trials"] == TRIALS and record["model_version"] == 3

    missing = runner.invoke(app, ["forge", "runs", "show", "nope"], catch_exceptions=False)
    assert f"recent runs: {run_id}" in one_error_line(missing)
