"""Per-operator Stream metrics in Ray's metrics system (exported to Prometheus by Ray).

``StreamMetrics.export`` copies a runner's status snapshot into ``ray.util.metrics``
counters and gauges; counters get the increase since the last export, so a restarted
coordinator (whose totals come back from the checkpoint) never counts twice.
"""

from __future__ import annotations

from typing import Any

from ray.util import metrics

_TAGS = ("topology", "operator")


class StreamMetrics:
    """The metrics of one topology; every series carries ``topology`` and ``operator``."""

    def __init__(self, topology: str) -> None:
        self.topology = topology
        self._last: dict[tuple[str, str], float] = {}
        self._counters = {
            name: metrics.Counter(f"datapunk_stream_{name}", description=text, tag_keys=_TAGS)
            for name, text in (
                ("events_total", "events decoded from the source"),
                ("output_rows_total", "rows committed per output (operator)"),
                ("late_events_total", "events too late for an operator (to the late table)"),
                ("dead_letters_total", "undecodable or schema-violating messages"),
                ("rollbacks_total", "epochs rolled back (source reconnect, partition failure)"),
                ("checkpoints_total", "epochs committed"),
            )
        }
        self._gauges = {
            name: metrics.Gauge(f"datapunk_stream_{name}", description=text, tag_keys=_TAGS)
            for name, text in (
                ("events_per_second", "events per second over the last epoch"),
                ("event_time_lag_seconds", "wall clock minus the newest event time"),
                ("watermark_delay_seconds", "wall clock minus the operator's watermark"),
                ("checkpoint_duration_seconds", "time to snapshot, save and write sinks"),
            )
        }

    def export(self, status: dict[str, Any]) -> None:
        self._count("events_total", "source", status.get("events_in", 0))
        self._count("dead_letters_total", "source", status.get("dead_letters", 0))
        self._count("rollbacks_total", "runner", status.get("rollbacks", 0))
        self._count("checkpoints_total", "runner", status.get("epochs", 0))
        for output, rows in status.get("outputs", {}).items():
            self._count("output_rows_total", output, rows)
        for operator, late in status.get("late", {}).items():
            self._count("late_events_total", operator, late)
        self._set("events_per_second", "source", status.get("events_per_s"))
        self._set("event_time_lag_seconds", "source", status.get("event_time_lag_s"))
        self._set(
            "checkpoint_duration_seconds", "runner", status.get("last_checkpoint_ms", 0) / 1000
        )
        for operator, delay in (status.get("watermark_delay_s") or {}).items():
            self._set("watermark_delay_seconds", operator, delay)

    def _count(self, name: str, operator: str, total: float) -> None:
        key = (name, operator)
        delta = float(total) - self._last.get(key, 0.0)
        self._last[key] = float(total)
        if delta > 0:
            self._counters[name].inc(delta, tags={"topology": self.topology, "operator": operator})

    def _set(self, name: str, operator: str, value: float | None) -> None:
        if value is not None:
            self._gauges[name].set(
                float(value), tags={"topology": self.topology, "operator": operator}
            )
