"""PSI: hand-worked values, the bins, properties, the per-feature drift report, and the
drift job's typed errors (embedded Lake and registry, no Ray)."""

from __future__ import annotations

import asyncio
import math
from datetime import UTC, datetime, timedelta
from pathlib import Path

import numpy as np
import pyarrow as pa
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from actors.cortex.predlog import lake_append, log_table_name, prediction_rows
from actors.cortex.psi import (
    EPSILON,
    REPORT_SCHEMA,
    NoServedRowsError,
    bin_fractions,
    drift_report,
    drift_status,
    psi,
)
from actors.lake.service import LakeService
from cluster.errors import InvalidInputError
from cluster.settings import Settings, load_settings
from jobs.drift import DriftRequest, parse_since, run_drift
from jobs.drift import main as drift_main
from tests.unit.test_cortex_scoring import register_tiny_model, source_rows, write_table


def test_hand_worked_continuous_example() -> None:
    # 8 distinct values > 2 bins: continuous. The median of 1..8 is 4.5, so the bins are
    # (-inf, 4.5) and [4.5, inf): expected 4/8 | 4/8, actual 2/8 | 6/8.
    expected = np.arange(1, 9, dtype=float)
    actual = np.array([1, 2, 6, 7, 8, 9, 10, 11], dtype=float)
    e, a = bin_fractions(expected, actual, bins=2)
    assert e.tolist() == [0.5, 0.5] and a.tolist() == [0.25, 0.75]
    by_hand = (0.25 - 0.5) * math.log(0.25 / 0.5) + (0.75 - 0.5) * math.log(0.75 / 0.5)
    assert psi(expected, actual, bins=2) == pytest.approx(by_hand)
    assert by_hand == pytest.approx(0.274653, abs=1e-6)


def test_an_empty_bin_is_smoothed_with_epsilon() -> None:
    # Every served value is below the median: the upper bin is empty (fraction EPSILON).
    expected = np.arange(1, 9, dtype=float)
    actual = np.array([0, 1, 2, 3], dtype=float)
    by_hand = (1.0 - 0.5) * math.log(1.0 / 0.5) + (EPSILON - 0.5) * math.log(EPSILON / 0.5)
    assert psi(expected, actual, bins=2) == pytest.approx(by_hand)
    assert math.isfinite(by_hand) and by_hand > 4


def test_hand_worked_discrete_example() -> None:
    # 2 distinct training values <= 10 bins: one bin per value plus "never seen".
    expected = np.array([0, 0, 0, 1], dtype=float)
    actual = np.array([0, 1, 1, 1], dtype=float)
    e, a = bin_fractions(expected, actual)
    assert e.tolist() == [0.75, 0.25, 0.0] and a.tolist() == [0.25, 0.75, 0.0]
    # The empty third bin contributes (eps - eps) * ln 1 = 0; the rest is 2 * 0.5 * ln 3.
    assert psi(expected, actual) == pytest.approx(math.log(3))


def test_a_constant_column_detects_a_shift_to_either_side() -> None:
    training = np.full(500, 3.0)
    assert psi(training, np.full(200, 3.0)) == 0.0
    up, down = psi(training, np.full(200, 4.0)), psi(training, np.full(200, 2.0))
    assert up > 0.25 and down > 0.25
    assert up == pytest.approx(down)  # both land in the "never seen" bin


def test_identical_distributions_are_stable() -> None:
    rng = np.random.default_rng(11)
    sample = rng.normal(size=5_000)
    assert psi(sample, sample) == 0.0
    other = rng.normal(size=5_000)  # same distribution, another sample
    assert psi(sample, other) < 0.02


def test_a_shifted_distribution_is_drift_and_grows_with_the_shift() -> None:
    rng = np.random.default_rng(12)
    training = rng.normal(size=5_000)
    shifts = [0.1, 0.5, 1.0, 2.0]
    values = [psi(training, rng.normal(loc=s, size=5_000)) for s in shifts]
    assert values == sorted(values)
    assert values[0] < 0.1 and values[-1] > 0.25
    assert drift_status(values[-1]) == "drift"


def test_continuous_bins_follow_training_quantiles() -> None:
    training = np.arange(1000, dtype=float)
    e, _ = bin_fractions(training, training, bins=10)
    assert len(e) == 10 and np.allclose(e, 0.1)
    # Values outside the training range fall into the open-ended end bins.
    _, a = bin_fractions(training, np.array([-50.0, 5_000.0]), bins=10)
    assert a[0] == 0.5 and a[-1] == 0.5


@settings(max_examples=60, deadline=None)
@given(
    st.lists(st.floats(-1e6, 1e6), min_size=1, max_size=200),
    st.lists(st.floats(-1e6, 1e6), min_size=1, max_size=200),
    st.integers(2, 20),
)
def test_psi_is_never_negative_and_fractions_sum_to_one(
    expected: list[float], actual: list[float], bins: int
) -> None:
    e, a = bin_fractions(np.array(expected), np.array(actual), bins)
    assert e.sum() == pytest.approx(1.0) and a.sum() == pytest.approx(1.0)
    assert psi(np.array(expected), np.array(actual), bins) >= 0.0


@pytest.mark.parametrize(
    ("expected", "actual", "bins", "field"),
    [
        (np.array([]), np.array([1.0]), 10, "expected"),
        (np.array([1.0]), np.array([]), 10, "actual"),
        (np.array([1.0, math.nan]), np.array([1.0]), 10, "expected"),
        (np.array([1.0]), np.array([math.inf]), 10, "actual"),
        (np.array([1.0]), np.array([1.0]), 1, "bins"),
    ],
)
def test_bad_inputs_are_typed_errors(
    expected: np.ndarray, actual: np.ndarray, bins: int, field: str
) -> None:
    with pytest.raises(InvalidInputError) as caught:
        psi(expected, actual, bins)
    assert caught.value.fields["field"] == field


def test_status_bands() -> None:
    assert [drift_status(v) for v in (0.0, 0.099, 0.1, 0.249, 0.25, 3.0)] == [
        "stable",
        "stable",
        "moderate",
        "moderate",
        "drift",
        "drift",
    ]


def test_drift_report_one_row_per_feature() -> None:
    rng = np.random.default_rng(13)
    training = pa.table(
        {
            "age": rng.normal(50, 10, 2_000),
            "bmi": rng.normal(25, 4, 2_000),
            "label": rng.integers(0, 2, 2_000),
        }
    )
    served = pa.table(
        {
            "age": pa.array([*rng.normal(50, 10, 999), None], pa.float64()),
            "bmi": rng.normal(35, 4, 1_000),  # shifted by 2.5 standard deviations
            "request_id": [str(i) for i in range(1_000)],
        }
    )
    report = drift_report(training, served, ["age", "bmi"])
    assert report.schema == REPORT_SCHEMA
    rows = {r["feature"]: r for r in report.to_pylist()}
    assert list(rows) == ["age", "bmi"]
    assert rows["age"]["status"] == "stable" and rows["bmi"]["status"] == "drift"
    assert rows["age"]["training_rows"] == 2_000 and rows["age"]["served_rows"] == 999
    assert rows["bmi"]["psi"] == pytest.approx(
        psi(training["bmi"].to_numpy(), served["bmi"].to_numpy())
    )


def test_drift_report_refuses_missing_and_non_numeric_columns() -> None:
    training = pa.table({"age": [1.0, 2.0], "name": ["a", "b"]})
    with pytest.raises(InvalidInputError, match="served columns") as caught:
        drift_report(training, pa.table({"bmi": [1.0]}), ["age"])
    assert caught.value.fields["value"] == ["age"]
    with pytest.raises(InvalidInputError, match="training column 'name'"):
        drift_report(training, pa.table({"name": [1.0]}), ["name"])
    with pytest.raises(InvalidInputError, match="all null or NaN"):
        drift_report(training, pa.table({"age": pa.array([None], pa.float64())}), ["age"])


# ---- jobs.drift's typed errors, on an embedded Lake (no Ray) --------------------------


@pytest.fixture
def drift_settings(data_dir: Path) -> Settings:
    settings = load_settings(data_dir=data_dir)
    snapshot = asyncio.run(write_table(settings, "ml.train", source_rows(100)))
    asyncio.run(
        register_tiny_model(settings, "tiny", "regression", table="ml.train", snapshot_id=snapshot)
    )
    return settings


def _log(settings: Settings, version: int, at: datetime) -> None:
    features = pa.table({"x1": [1.0, 2.0], "x2": [3.0, 4.0]})
    rows = prediction_rows(
        request_id="r",
        model="tiny",
        version=version,
        latency_ms=1.0,
        features=features,
        outputs={"prediction": np.array([0.5, 0.6])},
        at=at,
    )

    async def write() -> None:
        append = lake_append(LakeService.from_settings(settings))
        await append(log_table_name(settings.cortex.log_namespace, "tiny"), rows)

    asyncio.run(write())


def test_drift_without_logged_rows_is_one_typed_line(
    drift_settings: Settings, capsys: pytest.CaptureFixture[str]
) -> None:
    request = DriftRequest("tiny", 1)
    with pytest.raises(NoServedRowsError, match=r"'cortex\.tiny_predictions' does not exist"):
        asyncio.run(run_drift(drift_settings, request))
    at = datetime(2026, 5, 1, tzinfo=UTC)
    _log(drift_settings, 2, at)  # another version only
    with pytest.raises(NoServedRowsError, match="has no rows for model 'tiny' version 1"):
        asyncio.run(run_drift(drift_settings, request))
    _log(drift_settings, 1, at)
    later = DriftRequest("tiny", 1, since=at + timedelta(seconds=1))
    with pytest.raises(NoServedRowsError, match=r"version 1 since 2026-05-01T00:00:01\+00:00"):
        asyncio.run(run_drift(drift_settings, later))
    assert drift_main(["tiny", "--since", "yesterday"], settings=drift_settings) == 2
    assert "".join(capsys.readouterr().out.split("\n")).startswith("error: invalid --since=")
    assert drift_main(["tiny", "--alias", "canary"], settings=drift_settings) == 2
    assert "version of model 'tiny'" in capsys.readouterr().out
    # With rows in the window it runs: the report table is created and appended to.
    outcome = asyncio.run(run_drift(drift_settings, DriftRequest("tiny", 1, since=at)))
    assert outcome.rows.column("feature").to_pylist() == ["x1", "x2"]
    assert outcome.report_table == "cortex.drift_reports" and outcome.snapshot_id is not None


def test_since_parses_iso_times_as_utc() -> None:
    assert parse_since(None) is None
    assert parse_since("2026-05-01T02:00:00+02:00") == datetime(2026, 5, 1, tzinfo=UTC)
    assert parse_since("2026-05-01T00:00:00") == datetime(2026, 5, 1, tzinfo=UTC)
    assert parse_since("2026-05-01T00:00:00Z") == datetime(2026, 5, 1, tzinfo=UTC)
    with pytest.raises(InvalidInputError, match="--since"):
        parse_since("soon")
