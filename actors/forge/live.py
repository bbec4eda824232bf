"""Trials as they run: Tune's callback events folded into one entry per trial.

Pure bookkeeping for the driver: ``LiveTrials.apply`` takes an event from
``actors/forge/tuning.ProgressCallback`` and returns it in the shape ``progress``
callers get (``trial_id``, ``status``, ``epoch``, ``metrics``); ``trials`` is what the
run record shows while the run is going.
"""

from __future__ import annotations

import math
from typing import Any

# What Tune adds to every result; the rest of a result is what the loop reported.
_TUNE_KEYS = {
    "timestamp",
    "checkpoint_dir_name",
    "should_checkpoint",
    "done",
    "training_iteration",
    "trial_id",
    "date",
    "time_this_iter_s",
    "time_total_s",
    "pid",
    "hostname",
    "node_ip",
    "time_since_restore",
    "iterations_since_restore",
    "config",
    "experiment_tag",
}
_STATUS = {"start": "running", "result": "running", "complete": "completed", "error": "error"}


class LiveTrials:
    """Every trial seen so far, by id, in first-seen order."""

    def __init__(self) -> None:
        self._trials: dict[str, dict[str, Any]] = {}

    def apply(self, event: dict[str, Any]) -> dict[str, Any]:
        """Fold ``event`` in; return it as the caller's progress event."""
        trial_id = str(event["trial_id"])
        entry = self._trials.setdefault(
            trial_id,
            {"trial_id": trial_id, "status": "pending", "params": {}, "epoch": 0, "metrics": {}},
        )
        entry["status"] = _STATUS.get(event["event"], entry["status"])
        if "params" in event:
            entry["params"] = dict(event["params"])
        result = event.get("result")
        if result is not None:
            entry["epoch"] = int(result.get("epoch", entry["epoch"]) or 0)
            entry["metrics"] = {
                k: _number(v)
                for k, v in result.items()
                if k not in _TUNE_KEYS and k != "epoch" and isinstance(v, int | float)
            }
            if "config" in result and not entry["params"]:
                entry["params"] = dict(result["config"])
        return {"event": event["event"], **entry}

    def trials(self) -> list[dict[str, Any]]:
        """Every trial's latest entry."""
        return [dict(entry) for entry in self._trials.values()]


def _number(value: float) -> float | None:
    return float(value) if math.isfinite(value) else None
