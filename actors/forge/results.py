"""Per-trial results and the best trial: pure functions of what the trials reported.

A trial's history is the rows it reported (one per epoch). The best trial is the one
whose metrics at its last checkpoint are best on the objective; that checkpoint is what
gets registered, with those metrics, so the registry's numbers describe its artifact.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

CHECKPOINT_DIR_KEY = "checkpoint_dir_name"
_RESERVED = {"epoch", "train_loss", "resumed_from_epoch"}


@dataclass(frozen=True)
class TrialRecord:
    """One trial as Tune left it: its sampled parameters, error and reported rows."""

    trial_id: str
    params: dict[str, Any]
    rows: list[dict[str, Any]]
    error: str | None = None
    path: str | None = None
    extra: dict[str, Any] = field(default_factory=dict)


def _finite(value: Any) -> float | None:
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    return float(value) if math.isfinite(value) else None


def _picked(row: Mapping[str, Any], metrics: Sequence[str]) -> dict[str, float | None]:
    names = [*metrics, "train_loss"]
    return {name: _finite(row.get(name)) for name in names if name in row}


def summarise(trial: TrialRecord, metrics: Sequence[str], epochs: int) -> dict[str, Any]:
    """The run record's entry for ``trial``: status, parameters, last metrics, history."""
    last = trial.rows[-1] if trial.rows else {}
    checkpointed = [r for r in trial.rows if r.get(CHECKPOINT_DIR_KEY)]
    epoch = int(last.get("epoch", 0) or 0)
    if trial.error:
        status = "error"
    elif epoch >= epochs:
        status = "completed"
    else:
        status = "stopped" if trial.rows else "pending"
    checkpoint = None
    if checkpointed:
        row = checkpointed[-1]
        checkpoint = {
            "epoch": int(row.get("epoch", 0)),
            "dir": row[CHECKPOINT_DIR_KEY],
            "metrics": _picked(row, metrics),
        }
    return {
        "trial_id": trial.trial_id,
        "status": status,
        "params": trial.params,
        "epoch": epoch,
        "resumed_from_epoch": _resumes(trial.rows),
        "metrics": _picked(last, metrics),
        "checkpoint": checkpoint,
        "history": [{"epoch": int(r.get("epoch", 0)), **_picked(r, metrics)} for r in trial.rows],
        "error": trial.error,
        "path": trial.path,
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
    """The summarised trial whose last checkpoint scores best on ``metric``; None if no
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


def metric_names(rows: Sequence[Mapping[str, Any]]) -> list[str]:
    """The metric columns the rows carry (for tables), in first-seen order."""
    names: list[str] = []
    for row in rows:
        for key in row:
            if key not in names and key not in _RESERVED and key != "epoch":
                names.append(key)
    return names
