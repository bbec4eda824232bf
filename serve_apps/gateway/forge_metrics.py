"""Forge's runs and trials as Prometheus gauges on the gateway's ``/metrics``.

Training runs in short-lived job processes, whose own metrics vanish when they exit; the
run store outlives them. So the gateway reads the latest runs' records (at most every
``ttl_s``, when scraped) and publishes how many runs are in each state and how many of
their trials ended in each status.
"""

from __future__ import annotations

import logging
import time
import weakref
from collections import Counter
from collections.abc import Awaitable, Callable, Iterable, Mapping
from typing import Any

from prometheus_client import CollectorRegistry, Gauge

logger = logging.getLogger(__name__)

RunsSource = Callable[[], Awaitable[list[dict[str, Any]]]]
RECENT_RUNS = 500


def forge_counts(
    runs: Iterable[Mapping[str, Any]],
) -> tuple[dict[str, int], dict[str, int]]:
    """(runs by state, trials by status) over ``runs``' records."""
    states: Counter[str] = Counter()
    trials: Counter[str] = Counter()
    for run in runs:
        states[str(run.get("state") or "unknown")] += 1
        for trial in (run.get("results") or {}).get("trials") or []:
            trials[str(trial.get("status") or "unknown")] += 1
    return dict(states), dict(trials)


class ForgeGauges:
    """``datapunk_forge_runs{state}`` and ``datapunk_forge_trials{status}``."""

    def __init__(
        self,
        registry: CollectorRegistry,
        source: RunsSource,
        *,
        ttl_s: float = 15.0,
        now: Callable[[], float] = time.monotonic,
    ) -> None:
        self.source = source
        self._ttl_s = ttl_s
        self._now = now
        self._read_at: float | None = None
        self.runs = Gauge(
            "datapunk_forge_runs",
            f"Forge training runs by state (the latest {RECENT_RUNS} runs).",
            ["state"],
            registry=registry,
        )
        self.trials = Gauge(
            "datapunk_forge_trials",
            f"Trials of the latest {RECENT_RUNS} Forge runs, by final status.",
            ["status"],
            registry=registry,
        )

    async def refresh(self) -> None:
        """Re-read the run store unless it was read within ``ttl_s``; a failed read keeps
        the last values (a scrape never fails for it)."""
        now = self._now()
        if self._read_at is not None and now - self._read_at < self._ttl_s:
            return
        self._read_at = now
        try:
            runs = await self.source()
        except Exception:
            logger.warning("forge metrics: the run store could not be read", exc_info=True)
            return
        states, trials = forge_counts(runs)
        self.runs.clear()
        self.trials.clear()
        for state, count in states.items():
            self.runs.labels(state=state).set(count)
        for status, count in trials.items():
            self.trials.labels(status=status).set(count)


_ON_REGISTRY: weakref.WeakKeyDictionary[CollectorRegistry, ForgeGauges] = (
    weakref.WeakKeyDictionary()
)


def forge_gauges(registry: CollectorRegistry, source: RunsSource) -> ForgeGauges:
    """The gauges on ``registry``, created once: an app rebuilt over the same metrics
    registry (tests do) reads ``source`` through the gauges already registered."""
    gauges = _ON_REGISTRY.get(registry)
    if gauges is None:
        gauges = _ON_REGISTRY[registry] = ForgeGauges(registry, source)
    gauges.source = source
    return gauges
