"""Counters and gauges of a running topology, per operator, for status and Prometheus.

Pure bookkeeping: the runner reports what happened, the Ray shell copies the numbers
into ``ray.util.metrics`` (exported to Prometheus by Ray) and answers status calls.
Counters survive restarts through the checkpoint (``counters``/``restore``).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

import pyarrow as pa

from actors.stream.topology import PatternOp, Topology, WindowOp
from actors.stream.watermark import NO_WATERMARK
from actors.stream.windows import TICKS_PER_S

_COUNTERS = (
    "events_in",
    "events_kept",
    "dead_letters",
    "epochs",
    "rollbacks",
    "redelivered_skipped",
    "ack_failures",
)


class RunnerStats:
    """What a topology has done; rates are over the last committed epoch."""

    def __init__(
        self, topology: Topology, *, wall: Callable[[], float], monotonic: Callable[[], float]
    ) -> None:
        self._wall = wall
        self._monotonic = monotonic
        self._delays = {
            op.name: op.max_delay_s if isinstance(op, WindowOp | PatternOp) else 0.0
            for op in topology.operators
        }
        self.totals: dict[str, int] = dict.fromkeys(_COUNTERS, 0)
        self.outputs: dict[str, int] = {}
        self.late: dict[str, int] = dict.fromkeys(self._delays, 0)
        self.newest_ticks = NO_WATERMARK
        self.events_per_s = 0.0
        self.last_checkpoint_ms = 0.0
        self.last_rollback: str | None = None
        self._since_commit = 0
        self._last_commit_at = monotonic()

    def received(self, decoded: int, kept: int, dead: int, newest: int) -> None:
        self.totals["events_in"] += decoded
        self.totals["events_kept"] += kept
        self.totals["dead_letters"] += dead
        self._since_commit += decoded
        self.newest_ticks = max(self.newest_ticks, newest)

    def skipped(self, count: int) -> None:
        self.totals["redelivered_skipped"] += count

    def committed(
        self, epoch: int, outputs: Mapping[str, pa.Table], seconds: float, acked: bool
    ) -> None:
        del epoch
        self.totals["epochs"] += 1
        self.totals["ack_failures"] += 0 if acked else 1
        for name, table in outputs.items():
            self.outputs[name] = self.outputs.get(name, 0) + table.num_rows
        late = outputs.get("late")
        if late is not None and late.num_rows:
            for name, count in zip(*_value_counts(late), strict=True):
                self.late[name] = self.late.get(name, 0) + count
        now = self._monotonic()
        span = max(now - self._last_commit_at, 1e-9)
        self.events_per_s = self._since_commit / span
        self._since_commit, self._last_commit_at = 0, now
        self.last_checkpoint_ms = seconds * 1000

    def rolled_back(self, reason: str) -> None:
        self.totals["rollbacks"] += 1
        self.last_rollback = reason
        self._since_commit = 0

    def counters(self) -> dict[str, Any]:
        """What a checkpoint keeps so counts survive a restart."""
        return {
            "totals": self.totals,
            "outputs": self.outputs,
            "late": self.late,
            "newest_ticks": self.newest_ticks,
        }

    def restore(self, saved: Mapping[str, Any]) -> None:
        self.totals.update(saved.get("totals", {}))
        self.outputs.update(saved.get("outputs", {}))
        self.late.update(saved.get("late", {}))
        self.newest_ticks = int(saved.get("newest_ticks", NO_WATERMARK))

    def snapshot(self) -> dict[str, Any]:
        """Counters plus gauges: event-time lag and watermark delay per operator."""
        lag = None
        delays: dict[str, float | None] = dict.fromkeys(self._delays)
        if self.newest_ticks != NO_WATERMARK:
            newest_s = self.newest_ticks / TICKS_PER_S
            lag = self._wall() - newest_s
            delays = {name: lag + delay for name, delay in self._delays.items()}
        return {
            **self.totals,
            "outputs": dict(self.outputs),
            "late": dict(self.late),
            "events_per_s": round(self.events_per_s, 1),
            "last_checkpoint_ms": round(self.last_checkpoint_ms, 2),
            "event_time_lag_s": lag,
            "watermark_delay_s": delays,
            "last_rollback": self.last_rollback,
        }


def _value_counts(late: pa.Table) -> tuple[list[str], list[int]]:
    counts = late["operator"].value_counts()
    return counts.field("values").to_pylist(), counts.field("counts").to_pylist()
