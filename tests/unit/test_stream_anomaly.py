"""AnomalyDetector: examples, and properties against a per-event Python reference."""

from __future__ import annotations

import itertools
import math
from typing import Any

import numpy as np
import pyarrow as pa
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from actors.stream.anomaly import AnomalyDetector, Threshold, ZScore
from cluster.errors import InvalidInputError

SCHEMA = pa.schema([("k", pa.string()), ("t", pa.int64()), ("v", pa.float64())])


def _batch(rows: list[tuple[str, int, float | None]]) -> pa.Table:
    return pa.Table.from_pylist([{"k": k, "t": t, "v": v} for k, t, v in rows], schema=SCHEMA)


def _detector(method: Threshold | ZScore, window_s: float = 10) -> AnomalyDetector:
    return AnomalyDetector(
        column="v", key_columns=["k"], time_column="t", window_s=window_s, method=method
    )


def test_zscore_flags_spike_with_window_stats() -> None:
    rows = [("x", i, float(10 + (i % 2))) for i in range(8)] + [("x", 8, 50.0)]
    result = _detector(ZScore(z=3, min_count=3)).process(_batch(rows))
    out = result.anomalies.to_pylist()
    assert len(out) == 1
    assert out[0]["t"] == 8
    assert out[0]["window_count"] == 8
    assert out[0]["window_mean"] == pytest.approx(10.5)
    assert out[0]["window_std"] == pytest.approx(0.5)
    assert out[0]["z"] == pytest.approx(79.0)


def test_window_slides_across_batches() -> None:
    detector = _detector(ZScore(z=2, min_count=2), window_s=5)
    detector.process(_batch([("x", 0, 100.0), ("x", 1, 0.0), ("x", 2, 1.0)]))
    out = detector.process(_batch([("x", 7, 1.0), ("x", 8, 1.2)])).anomalies.to_pylist()
    # at t=8 the window (3, 8] holds only t=7: below min_count, so nothing is flagged
    assert out == []
    assert detector.tail_size() == 2


def test_threshold_and_keys_are_isolated() -> None:
    detector = _detector(Threshold(min=0, max=5))
    result = detector.process(_batch([("x", 0, 6.0), ("y", 0, 3.0), ("y", 1, -1.0)]))
    assert sorted((r["k"], r["t"]) for r in result.anomalies.to_pylist()) == [("x", 0), ("y", 1)]
    first = next(r for r in result.anomalies.to_pylist() if r["k"] == "x")
    assert first["window_count"] == 0
    assert first["window_mean"] is None


def test_late_events_reported_and_nulls_skipped() -> None:
    detector = _detector(Threshold(max=0))
    detector.process(_batch([("x", 5, -1.0)]))
    result = detector.process(_batch([("x", 4, 9.0), ("x", 6, None), ("y", 1, 9.0)]))
    assert [r["t"] for r in result.late.to_pylist()] == [4]
    assert [(r["k"], r["t"]) for r in result.anomalies.to_pylist()] == [("y", 1)]


def test_missing_column_is_a_typed_error() -> None:
    with pytest.raises(InvalidInputError, match="'v'"):
        _detector(ZScore(z=1)).process(pa.table({"k": ["x"], "t": [1]}))


def test_bad_window_is_rejected() -> None:
    with pytest.raises(InvalidInputError, match="window_s"):
        _detector(ZScore(z=1), window_s=0)


# ---------------------------------------------------------------- reference
class _Reference:
    def __init__(self, window: int, z: float, min_count: int) -> None:
        self.window, self.z, self.min_count = window, z, min_count
        self.history: dict[str, list[tuple[int, float]]] = {}

    def process(self, rows: list[tuple[str, int, float]]) -> tuple[list[dict[str, Any]], list]:
        last = {k: max(t for t, _ in h) for k, h in self.history.items() if h}
        late = [r for r in rows if r[0] in last and r[1] < last[r[0]]]
        ok = [r for r in rows if not (r[0] in last and r[1] < last[r[0]])]
        scored = []
        for k, t, v in sorted(ok, key=lambda r: (r[0], r[1])):
            history = self.history.setdefault(k, [])
            window = [x for s, x in history if s > t - self.window]
            scored.append(self._score(k, t, v, window))
            history.append((t, v))
        return scored, late

    def _score(self, k: str, t: int, v: float, window: list[float]) -> dict[str, Any]:
        mean = float(np.mean(window)) if window else math.nan
        std = float(np.std(window)) if window else math.nan
        z = (v - mean) / std if window and std > 0 else math.nan
        return {"k": k, "t": t, "v": v, "count": len(window), "mean": mean, "std": std, "z": z}


events = st.tuples(st.sampled_from(["x", "y"]), st.integers(0, 40), st.integers(-20, 20).map(float))
FAST = settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])


def _split(rows: list, cuts: list[int]) -> list[list]:
    points = sorted({c % (len(rows) + 1) for c in cuts} | {0, len(rows)})
    return [rows[a:b] for a, b in itertools.pairwise(points)]


@FAST
@given(
    rows=st.lists(events, max_size=40),
    cuts=st.lists(st.integers(0, 50), max_size=5),
    window=st.integers(1, 15),
    z=st.sampled_from([0.5, 1.0, 1.7]),
    min_count=st.integers(1, 4),
    restore_at=st.integers(0, 6),
)
def test_zscore_matches_per_event_reference(
    rows: list, cuts: list[int], window: int, z: float, min_count: int, restore_at: int
) -> None:
    detector = _detector(ZScore(z=z, min_count=min_count), window_s=window)
    reference = _Reference(window, z, min_count)
    for index, part in enumerate(_split(rows, cuts)):
        if index == restore_at:  # a restored detector must carry on identically
            snapshot = detector.snapshot()
            detector = _detector(ZScore(z=z, min_count=min_count), window_s=window)
            detector.restore(snapshot)
        result = detector.process(_batch(part))
        scored, late = reference.process(part)
        assert result.late.to_pylist() == [{"k": k, "t": t, "v": v} for k, t, v in late]
        _check(result.anomalies.to_pylist(), scored, z, min_count)


def _check(got: list[dict[str, Any]], scored: list[dict[str, Any]], z: float, n: int) -> None:
    loose = {
        (s["k"], s["t"], s["v"])
        for s in scored
        if not math.isnan(s["z"]) and abs(abs(s["z"]) - z) < 1e-6
    }
    expected = [
        s for s in scored if s["count"] >= n and not math.isnan(s["z"]) and abs(s["z"]) >= z
    ]
    _same(
        [g for g in got if (g["k"], g["t"], g["v"]) not in loose],
        [s for s in expected if (s["k"], s["t"], s["v"]) not in loose],
    )


def _same(got: list[dict[str, Any]], expected: list[dict[str, Any]]) -> None:
    """Same events with the same window statistics (duplicates aligned by sorting)."""
    mine = sorted(
        (
            g["k"],
            g["t"],
            g["v"],
            g["window_count"],
            *_stats(g["window_mean"], g["window_std"], g["z"]),
        )
        for g in got
    )
    theirs = sorted(
        (s["k"], s["t"], s["v"], s["count"], *_stats(s["mean"], s["std"], s["z"])) for s in expected
    )
    assert [m[:4] for m in mine] == [t[:4] for t in theirs]
    for m, t in zip(mine, theirs, strict=True):
        assert m[4:] == pytest.approx(t[4:], rel=1e-6, abs=1e-6, nan_ok=True)


def _stats(*values: float | None) -> tuple[float, ...]:
    return tuple(_num(value) for value in values)


def _num(value: float | None) -> float:
    return math.nan if value is None else round(value, 6)


@FAST
@given(
    rows=st.lists(events, max_size=40),
    cuts=st.lists(st.integers(0, 50), max_size=5),
    window=st.integers(1, 15),
)
def test_threshold_matches_reference_and_stats(rows: list, cuts: list[int], window: int) -> None:
    detector = _detector(Threshold(min=-10, max=10), window_s=window)
    reference = _Reference(window, 1.0, 1)
    for part in _split(rows, cuts):
        result = detector.process(_batch(part))
        scored, _ = reference.process(part)
        expected = [s for s in scored if not -10 <= s["v"] <= 10]
        _same(result.anomalies.to_pylist(), expected)
