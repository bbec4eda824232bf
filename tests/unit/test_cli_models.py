"""`datapunk models` through Typer's test runner on a SQLite platform DB: tables, JSON,
one-line errors, forced moves and the promotion gate (with an injected evaluation)."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from typer.testing import CliRunner

import actors.forge.promotion
from actors.forge.registry import ModelRegistry, registry_from_settings
from cluster.cli import app
from cluster.settings import load_settings
from tests.clock import FakeClock
from tests.contracts.forge_store import MODEL, register


@pytest.fixture
def runner(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> CliRunner:
    monkeypatch.chdir(tmp_path)  # no configs/datapunk.yaml here
    monkeypatch.setenv("DATAPUNK_DATA_DIR", str(tmp_path / "state"))
    monkeypatch.setenv("COLUMNS", "200")  # whole table cells, not wrapped ones
    return CliRunner()


def with_registry(use: Callable[[ModelRegistry], Any], clock: FakeClock | None = None) -> Any:
    """Run ``use`` against the registry the CLI will open (same settings, same data dir)."""

    async def go() -> Any:
        now = (clock or FakeClock()).now
        async with registry_from_settings(load_settings(), now) as registry:
            return await use(registry)

    return asyncio.run(go())


@pytest.fixture
def three_versions(runner: CliRunner) -> CliRunner:
    async def setup(registry: ModelRegistry) -> None:
        for score in (0.5, 0.4, 0.3):
            await register(
                registry, metrics={"rmse": score}, params={"metric": "rmse", "mode": "min"}
            )
        await registry.set_alias(MODEL, "production", 1, actor="cli:ana", reason="first")

    with_registry(setup)
    return runner


def invoke(runner: CliRunner, *args: str) -> Any:
    return runner.invoke(app, ["models", *args], catch_exceptions=False)


def one_error_line(result: Any) -> str:
    """Exit 2, nothing on stdout, one `error:` line on stderr, no traceback."""
    assert result.exit_code == 2, result.output
    assert result.stdout == ""
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("error: ")
    line: str = lines[0]
    return line


def scores(by_version: dict[int, float], calls: list[tuple[Any, ...]]) -> Any:
    """A holdout evaluator with a fixed score per version (what the CLI injects)."""

    def build(_settings: Any) -> Any:
        async def evaluate(
            record: dict[str, Any], table: str, snapshot_id: int | None, metric: str
        ) -> float:
            calls.append((record["version"], table, snapshot_id, metric))
            return by_version[record["version"]]

        return evaluate

    return build


# --- ls and show -------------------------------------------------------------------------


def test_ls_on_an_empty_registry(runner: CliRunner) -> None:
    result = invoke(runner, "ls", "--json")
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout) == []


def test_ls_and_show(three_versions: CliRunner) -> None:
    listed = json.loads(invoke(three_versions, "ls", "--json").stdout)
    assert [(m["name"], m["latest_version"], m["aliases"]) for m in listed] == [
        (MODEL, 3, {"production": 1})
    ]
    table = invoke(three_versions, "ls")
    assert table.exit_code == 0 and MODEL in table.stdout and "production=1" in table.stdout
    shown = invoke(three_versions, "show", MODEL)
    assert shown.exit_code == 0, shown.output
    assert "versions of churn" in shown.stdout and "rmse=0.3" in shown.stdout
    assert "sales.orders@7" in shown.stdout
    one = json.loads(
        invoke(three_versions, "show", MODEL, "--alias", "production", "--json").stdout
    )
    assert (one["version"], one["aliases"]) == (1, ["production"])
    detail = invoke(three_versions, "show", MODEL, "--version", "2")
    assert "churn version 2" in detail.stdout and "lineage.code_version" in detail.stdout


def test_show_errors_are_one_line(three_versions: CliRunner) -> None:
    assert "versions: 1 to 3; aliases: production" in one_error_line(
        invoke(three_versions, "show", MODEL, "--version", "9")
    )
    assert "registered models: churn" in one_error_line(invoke(three_versions, "show", "ghost"))
    assert "not with --version" in one_error_line(
        invoke(three_versions, "show", MODEL, "--version", "1", "--alias", "production")
    )


# --- history -----------------------------------------------------------------------------


def test_history_and_where_an_alias_pointed(three_versions: CliRunner) -> None:
    clock = FakeClock()
    clock.advance(3600)
    with_registry(lambda r: r.set_alias(MODEL, "production", 3, actor="cli:bo"), clock)
    events = json.loads(invoke(three_versions, "history", MODEL, "--json").stdout)
    assert [(e["from_version"], e["to_version"], e["actor"]) for e in events] == [
        (None, 1, "cli:ana"),
        (1, 3, "cli:bo"),
    ]
    table = invoke(three_versions, "history", MODEL, "--alias", "production")
    assert "alias history of churn" in table.stdout and "cli:bo" in table.stdout
    # FakeClock starts at 2026-01-02T03:04:05Z; the move to 3 was an hour later.
    then = invoke(
        three_versions, "history", MODEL, "--alias", "production", "--at", "2026-01-02T03:30:00"
    )
    assert "pointed at version 1" in then.stdout
    later = invoke(
        three_versions,
        "history",
        MODEL,
        "--alias",
        "production",
        "--at",
        "2026-01-02T05:00Z",
        "--json",
    )
    assert json.loads(later.stdout)["version"] == 3
    before = invoke(three_versions, "history", MODEL, "--alias", "production", "--at", "2025-12-31")
    assert "pointed at no version" in before.stdout


def test_history_at_needs_an_alias_and_a_time(three_versions: CliRunner) -> None:
    assert "with --alias" in one_error_line(
        invoke(three_versions, "history", MODEL, "--at", "2026-01-01")
    )
    assert "ISO 8601" in one_error_line(
        invoke(three_versions, "history", MODEL, "--alias", "production", "--at", "yesterday")
    )


# --- promote -----------------------------------------------------------------------------


def test_a_plain_move_needs_force(three_versions: CliRunner) -> None:
    line = one_error_line(invoke(three_versions, "promote", MODEL, "--version", "2"))
    assert "--force" in line and "--holdout" in line
    forced = invoke(
        three_versions, "promote", MODEL, "--version", "2", "--force", "--reason", "hotfix"
    )
    assert forced.exit_code == 0, forced.output
    assert "promoted" in forced.stdout and "force" in forced.stdout
    events = json.loads(invoke(three_versions, "history", MODEL, "--json").stdout)
    assert (events[-1]["to_version"], events[-1]["reason"]) == (2, "hotfix")
    assert events[-1]["actor"].startswith("cli")


def test_the_gate_refuses_a_worse_version_with_exit_1(
    three_versions: CliRunner, monkeypatch: pytest.MonkeyPatch
) -> None:
    calls: list[tuple[Any, ...]] = []
    monkeypatch.setattr(
        actors.forge.promotion, "holdout_evaluator", scores({1: 0.30, 2: 0.35, 3: 0.20}, calls)
    )
    worse = invoke(
        three_versions, "promote", MODEL, "--version", "2", "--holdout", "sales.holdout@9"
    )
    assert worse.exit_code == 1, worse.output
    assert "refused" in worse.stdout and "sales.holdout@9" in worse.stdout
    assert calls == [(2, "sales.holdout", 9, "rmse"), (1, "sales.holdout", 9, "rmse")]
    better = invoke(
        three_versions,
        "promote", MODEL, "--version", "3", "--holdout", "sales.holdout", "--metric", "rmse",
        "--mode", "min", "--json",
    )  # fmt: skip
    assert better.exit_code == 0, better.output
    decision = json.loads(better.stdout)
    assert (decision["promoted"], decision["candidate_score"], decision["incumbent_score"]) == (
        True,
        0.20,
        0.30,
    )
    assert calls[-1] == (1, "sales.holdout", None, "rmse")
    assert with_registry(lambda r: r.version(MODEL, "production"))["version"] == 3


def test_bad_holdouts_and_force_with_a_holdout_are_one_line(three_versions: CliRunner) -> None:
    assert "TABLE@SNAPSHOT_ID" in one_error_line(
        invoke(three_versions, "promote", MODEL, "--version", "2", "--holdout", "t@x")
    )
    assert "give one of them" in one_error_line(
        invoke(three_versions, "promote", MODEL, "--version", "2", "--holdout", "t", "--force")
    )


def test_the_gate_scores_with_forges_evaluate_version(
    three_versions: CliRunner, monkeypatch: pytest.MonkeyPatch
) -> None:
    evaluate = pytest.importorskip(
        "actors.forge.evaluate", reason="Forge training (actors.forge.evaluate) is not built yet"
    )
    calls: list[tuple[Any, ...]] = []

    async def evaluate_version(
        settings: Any, record: dict[str, Any], table: str, snapshot_id: int | None, metric: str
    ) -> float:
        calls.append((record["version"], table, snapshot_id, metric, settings.data_path))
        return {1: 0.3, 2: 0.1, 3: 0.5}[record["version"]]

    monkeypatch.setattr(evaluate, "evaluate_version", evaluate_version)
    result = invoke(three_versions, "promote", MODEL, "--version", "2", "--holdout", "h@4")
    assert result.exit_code == 0, result.output
    data_path = load_settings().data_path
    assert calls == [(2, "h", 4, "rmse", data_path), (1, "h", 4, "rmse", data_path)]


# --- canaries ----------------------------------------------------------------------------


def test_canary_show_rollback_and_rollback_again(three_versions: CliRunner) -> None:
    started = invoke(
        three_versions, "canary", MODEL, "2", "--percent", "20", "--sticky-key", "X-User",
        "--reason", "try it",
    )  # fmt: skip
    assert started.exit_code == 0, started.output
    assert "20% to version 2, the rest to version 1, sticky by X-User" in started.stdout
    (listed,) = with_registry(lambda r: r.canaries(MODEL))
    assert (listed["alias"], listed["version"], listed["percent"]) == ("production", 2, 20.0)
    assert listed["created_by"].startswith("cli")

    shown = invoke(three_versions, "show", MODEL)
    assert shown.exit_code == 0, shown.output
    assert "canaries of churn" in shown.stdout and "20%" in shown.stdout
    assert "X-User" in shown.stdout
    as_json = json.loads(invoke(three_versions, "show", MODEL, "--json").stdout)
    assert [(c["alias"], c["version"]) for c in as_json["canaries"]] == [("production", 2)]

    rolled = invoke(three_versions, "rollback", MODEL, "--reason", "errors up")
    assert rolled.exit_code == 0, rolled.output
    assert "rolled back churn production" in rolled.stdout
    assert "20% to version 2" in rolled.stdout and "all traffic goes to version 1" in rolled.stdout
    assert with_registry(lambda r: r.canaries()) == []
    again = invoke(three_versions, "rollback", MODEL, "--json")
    assert again.exit_code == 0, again.output
    assert json.loads(again.stdout) == {
        "name": MODEL,
        "alias": "production",
        "rolled_back": False,
        "canary": None,
        "version": 1,
    }
    assert "canaries of" not in invoke(three_versions, "show", MODEL).stdout
    events = with_registry(lambda r: r.canary_history(MODEL))
    assert [(e["action"], e["reason"]) for e in events] == [
        ("start", "try it"),
        ("rollback", "errors up"),
    ]


def test_canary_replace_and_promote(three_versions: CliRunner) -> None:
    invoke(three_versions, "canary", MODEL, "2", "--percent", "10")
    replaced = invoke(three_versions, "canary", MODEL, "3", "--percent", "12.5", "--json")
    assert replaced.exit_code == 0, replaced.output
    record = json.loads(replaced.stdout)
    assert (record["version"], record["percent"], record["replaced"]["version"]) == (3, 12.5, 2)
    promoted = invoke(three_versions, "canary-promote", MODEL, "--reason", "green")
    assert promoted.exit_code == 0, promoted.output
    assert "version 1 -> 3" in promoted.stdout and "12.5% canary" in promoted.stdout
    assert with_registry(lambda r: r.version(MODEL, "production"))["version"] == 3
    events = json.loads(invoke(three_versions, "history", MODEL, "--json").stdout)
    assert (events[-1]["from_version"], events[-1]["to_version"], events[-1]["reason"]) == (
        1,
        3,
        "green",
    )
    twice = one_error_line(invoke(three_versions, "canary-promote", MODEL))
    assert "canary of alias 'production'" in twice and "does not exist" in twice


def test_canary_errors_are_one_line(three_versions: CliRunner) -> None:
    assert "between 0 and 100" in one_error_line(
        invoke(three_versions, "canary", MODEL, "2", "--percent", "100")
    )
    assert "header name" in one_error_line(
        invoke(three_versions, "canary", MODEL, "2", "--percent", "5", "--sticky-key", "a b")
    )
    assert "already points at version 1" in one_error_line(
        invoke(three_versions, "canary", MODEL, "1", "--percent", "5")
    )
    assert "versions: 1 to 3" in one_error_line(
        invoke(three_versions, "canary", MODEL, "9", "--percent", "5")
    )
    assert "aliases: production" in one_error_line(
        invoke(three_versions, "canary", MODEL, "2", "--percent", "5", "--alias", "staging")
    )
    assert "datapunk models canary" in one_error_line(
        invoke(three_versions, "canary-promote", MODEL)
    )
    assert "registered models: churn" in one_error_line(invoke(three_versions, "rollback", "x"))
    assert with_registry(lambda r: r.canaries()) == []
