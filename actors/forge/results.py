"""Per-trial results and the best trial: pure functions of what the trials reported.

A trial's history is the rows it reported (one per epoch). The best trial is the one
whose metrics at its latest checkpoint are best on the objective; that checkpoint is
what gets registered, with those metrics, so the registry's numbers describe its
artifact. Statuses: ``completed`` (all epochs), ``stopped`` (ended early by the
scheduler or a stop rule), ``error`` (failed after its retries), ``interrupted`` (the
run stopped before the trial ended), ``pending`` (never ran).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import PurePath
from typing import Any

CHECKPOINT_DIR_KEY = "checkpoint_dir_name"


@dataclass(frozen=True)
class TrialRecord:
    """One trial as Tune left it: parameters, reported rows, latest checkpoint, status."""

    trial_id: str
    params: dict[str, Any]
    rows: list[dict[str, Any]]
    error: str | None = None
    path: str | None = None
    checkpoint_path: str | None = None
    last: dict[str, Any] = field(default_factory=dict)
    tune_status: str | None = None


def _finite(value: Any) -> float | None:
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    return float(value) if math.isfinite(value) else None


def _picked(row: Mapping[str, Any], metrics: Sequence[str]) -> dict[str, float | None]:
    names = [*metrics, "train_loss"]
    return {name: _finite(row.get(name)) for name in names if name in row}


def _status(trial: TrialRecord, epoch: int, epochs: int) -> str:
    if trial.error or trial.tune_status == "ERROR":
        return "error"
    if trial.tune_status in (None, "TERMINATED"):
        if epoch >= epochs:
            return "completed"
        return "stopped" if epoch else "pending"
    return "interrupted" if epoch else "pending"


def summarise(trial: TrialRecord, metrics: Sequence[str], epochs: int) -> dict[str, Any]:
    """The run record's entry for ``trial``: status, parameters, last metrics, history."""
    last = trial.rows[-1] if trial.rows else trial.last
    epoch = int(last.get("epoch", 0) or 0)
    return {
        "trial_id": trial.trial_id,
        "status": _status(trial, epoch, epochs),
        "params": trial.params,
        "epoch": epoch,
        "resumed_from_epoch": _resumes(trial.rows),
        "metrics": _picked(last, metrics),
        "checkpoint": _checkpoint(trial, last, metrics),
        "history": [{"epoch": int(r.get("epoch", 0)), **_picked(r, metrics)} for r in trial.rows],
        "error": trial.error,
        "path": trial.path,
    }


def _checkpoint(
    trial: TrialRecord, last: Mapping[str, Any], metrics: Sequence[str]
) -> dict[str, Any] | None:
    """The trial's latest checkpoint and the metrics reported with it. A PBT-exploited
    trial's checkpoint is its donor's, reported (and so found) in the donor's rows:
    then the metrics are the last the trial holds, which Tune copied with it."""
    if trial.checkpoint_path is None:
        return None
    name = PurePath(trial.checkpoint_path).name
    row = next((r for r in reversed(trial.rows) if r.get(CHECKPOINT_DIR_KEY) == name), last)
    return {
        "epoch": int(row.get("epoch", 0) or 0),
        "path": trial.checkpoint_path,
        "metrics": _picked(row, metrics),
    }


def _resumes(rows: Sequence[Mapping[str, Any]]) -> list[int]:
    """Epochs a worker resumed after (one entry per resume), in order."""
    seen: list[int] = []
    for row in rows:
        start = int(row.get("resumed_from_epoch", 0) or 0)
        if start and start not in seen:
            seen.append(start)
    return seen


def best_trial(trials: Sequence[dict[str, Any]], metric: str, mode: str) -> dict[str, Any] | None:
    """The summarised trial whose latest checkpoint scores best on ``metric``; None if no
    trial saved a checkpoint with a finite score."""
    scored = [
        (t["checkpoint"]["metrics"].get(metric), t)
        for t in trials
        if t.get("checkpoint") and t["checkpoint"]["metrics"].get(metric) is not None
    ]
    if not scored:
        return None
    pick = min if mode == "min" else max
    return pick(scored, key=lambda pair: pair[0])[1]
