"""Cortex's replica metrics in Ray's metrics system (exported to Prometheus by Ray).

Every prediction series carries ``model`` and ``version``, so a canary's version is
compared with the stable one on the same dashboard; ``outcome`` is ``ok`` or the error
code (``signature_violation``, ``not_found``, ``internal_error``...).
"""

from __future__ import annotations

from ray.util import metrics

__all__ = ["BATCH_SIZE_BUCKETS", "LATENCY_BUCKETS_S", "CortexMetrics"]

LATENCY_BUCKETS_S = [0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5]
BATCH_SIZE_BUCKETS = [1.0, 2.0, 4.0, 8.0, 16.0, 32.0, 64.0, 128.0, 256.0, 512.0, 1024.0]
_MODEL_TAGS = ("model", "version")


class CortexMetrics:
    """Predictions, latency, batch sizes and prediction-log drops of one replica."""

    def __init__(self) -> None:
        self._predictions = metrics.Counter(
            "datapunk_cortex_predictions_total",
            description="Prediction requests by model, version and outcome.",
            tag_keys=(*_MODEL_TAGS, "outcome"),
        )
        self._rows = metrics.Counter(
            "datapunk_cortex_predicted_rows_total",
            description="Rows predicted, by model and version.",
            tag_keys=_MODEL_TAGS,
        )
        self._latency = metrics.Histogram(
            "datapunk_cortex_latency_seconds",
            description="Time in the replica from a request's arrival to its answer.",
            boundaries=LATENCY_BUCKETS_S,
            tag_keys=_MODEL_TAGS,
        )
        self._batch = metrics.Histogram(
            "datapunk_cortex_batch_size",
            description="Requests one forward pass served, by model and version.",
            boundaries=BATCH_SIZE_BUCKETS,
            tag_keys=_MODEL_TAGS,
        )
        self._dropped = metrics.Counter(
            "datapunk_cortex_log_dropped_rows_total",
            description="Prediction-log rows dropped because the buffer was full.",
        )
        self._dropped_seen = 0

    def predicted(self, model: str, version: int, rows: int, latency_s: float) -> None:
        tags = {"model": model, "version": str(version)}
        self._predictions.inc(1, tags={**tags, "outcome": "ok"})
        self._rows.inc(rows, tags=tags)
        self._latency.observe(latency_s, tags=tags)

    def failed(self, model: str, version: int | None, code: str) -> None:
        tags = {"model": model, "version": "" if version is None else str(version)}
        self._predictions.inc(1, tags={**tags, "outcome": code})

    def batch(self, model: str, version: int, requests: int) -> None:
        self._batch.observe(requests, tags={"model": model, "version": str(version)})

    def dropped(self, total: int) -> None:
        """The log buffer's running count of dropped rows (refused when offered, or not
        requeued after a failed write): the counter grows by the increase."""
        if total > self._dropped_seen:
            self._dropped.inc(total - self._dropped_seen)
            self._dropped_seen = total
