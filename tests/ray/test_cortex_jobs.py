"""Cortex's jobs on the shared local Ray cluster: batch scoring and drift.

``jobs.score`` runs in-process against the test cluster: Ray Data reads a pinned Lake
snapshot, an actor pool scores it, and the driver commits one snapshot. Every row's
prediction must equal the registered network's in this process, the snapshot must carry
the lineage, and a rerun must not write again. ``jobs.drift`` compares a prediction log
written with ``predlog.prediction_rows`` against the version's training snapshot.

No test submits ``python -m jobs.score`` through the Job Submission API: the shared
cluster runs without a dashboard, and tests/ray and tests/e2e have no job-submission
pattern yet.
"""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime, timedelta

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pytest
import torch

from actors.cortex.predlog import lake_append, log_table_name, prediction_rows
from actors.cortex.psi import psi
from actors.cortex.scoring import (
    MODEL_PROPERTY,
    RUN_ID_PROPERTY,
    SOURCE_SNAPSHOT_PROPERTY,
    SOURCE_TABLE_PROPERTY,
    VERSION_PROPERTY,
    default_run_id,
)
from actors.forge.registry import registry_from_settings
from actors.lake.service import LakeService
from cluster.settings import Settings
from jobs import drift as drift_job
from jobs import score as score_job
from tests.unit.test_cortex_scoring import (
    direct,
    register_tiny_model,
    source_rows,
    write_table,
)

pytestmark = pytest.mark.ray


async def _artifact(settings: Settings, name: str) -> bytes:
    async with registry_from_settings(settings) as registry:
        return (await registry.artifact(name, "production"))[1]


def _text(capsys: pytest.CaptureFixture[str]) -> str:
    return " ".join(capsys.readouterr().out.split())


def test_score_job_scores_every_row_once_with_lineage(
    ray_settings: Settings, capsys: pytest.CaptureFixture[str]
) -> None:
    settings, lake = ray_settings, LakeService.from_settings(ray_settings)
    trained_on = asyncio.run(write_table(settings, "ml.train", source_rows(200, seed=5)))
    record = asyncio.run(
        register_tiny_model(
            settings, "tiny", "classification", table="ml.train", snapshot_id=trained_on
        )
    )
    source = source_rows(3_000, seed=6)
    pinned = asyncio.run(write_table(settings, "ml.src", source))
    argv = ["tiny", "--table", "ml.src", "--output", "ml.scored", "--batch-size", "512"]

    assert score_job.main([*argv, "--actors", "1", "--device", "auto"], settings=settings) == 0
    summary = _text(capsys)
    assert "committed" in summary and "rows scored │ 3,000" in summary

    scored = asyncio.run(lake.scan("ml.scored")).sort_by("id")
    assert scored.num_rows == 3_000
    assert scored.select(source.column_names).equals(
        source.cast(scored.select(source.column_names).schema)
    )
    logits = direct(asyncio.run(_artifact(settings, "tiny")), source)
    assert scored["prediction"].to_pylist() == logits.argmax(dim=-1).tolist()
    probabilities = torch.softmax(logits.double(), dim=-1).numpy()
    assert np.array_equal(np.array(scored["probabilities"].to_pylist()), probabilities)
    assert set(scored["model"].to_pylist()) == {"tiny"}
    assert set(scored["version"].to_pylist()) == {record["version"]}

    history = asyncio.run(lake.history("ml.scored"))
    appends = [h for h in history if h["summary"].get(RUN_ID_PROPERTY)]
    assert len(appends) == 1
    lineage = appends[0]["summary"]
    assert lineage[MODEL_PROPERTY] == "tiny" and lineage[VERSION_PROPERTY] == "1"
    assert lineage[SOURCE_TABLE_PROPERTY] == "ml.src"
    assert lineage[SOURCE_SNAPSHOT_PROPERTY] == str(pinned)
    assert lineage[RUN_ID_PROPERTY] == default_run_id("tiny", 1, "ml.src", pinned, "ml.scored")

    # New source rows make a new snapshot; scoring the pinned one again is the same run.
    asyncio.run(lake.append("ml.src", source_rows(10, seed=7)))
    assert score_job.main([*argv, "--snapshot", str(pinned)], settings=settings) == 0
    assert "already committed" in _text(capsys)
    assert asyncio.run(lake.scan("ml.scored")).num_rows == 3_000
    assert len(asyncio.run(lake.history("ml.scored"))) == len(history)


def test_drift_job_appends_a_report_per_feature(
    ray_settings: Settings, capsys: pytest.CaptureFixture[str]
) -> None:
    settings, lake = ray_settings, LakeService.from_settings(ray_settings)
    training = source_rows(2_000, seed=8)
    trained_on = asyncio.run(write_table(settings, "ml.train", training))
    asyncio.run(
        register_tiny_model(
            settings, "tiny", "regression", table="ml.train", snapshot_id=trained_on
        )
    )
    # Served rows: x1 shifted by two standard deviations, x2 as in training; older rows
    # and rows of another version are outside the window the job is asked about.
    rng = np.random.default_rng(9)
    start = datetime(2026, 3, 1, tzinfo=UTC)
    log = log_table_name(settings.cortex.log_namespace, "tiny")

    def request(i: int, version: int, at: datetime, x1_mean: float) -> pa.Table:
        features = pa.table({"x1": rng.normal(x1_mean, 2, 100), "x2": rng.integers(0, 20, 100)})
        outputs = {"prediction": rng.normal(size=100)}
        return prediction_rows(
            request_id=f"r{i}", model="tiny", version=version, latency_ms=2.0,
            features=features, outputs=outputs, at=at,
        )  # fmt: skip

    batches = [request(0, 1, start - timedelta(days=1), 1.0), request(1, 2, start, 9.0)]
    batches += [request(i, 1, start + timedelta(minutes=i), 5.0) for i in range(2, 10)]

    async def write_log() -> None:
        append = lake_append(lake)  # creates the log table as a Serve replica's logger does
        for batch in batches:
            await append(log, batch)

    asyncio.run(write_log())

    argv = ["tiny", "--version", "1", "--since", start.isoformat(), "--report", "ml.drift"]
    assert drift_job.main(argv, settings=settings) == 0
    printed = _text(capsys)
    assert "drift of tiny v1" in printed and "x1" in printed and "x2" in printed

    report = asyncio.run(lake.scan("ml.drift"))
    rows = {r["feature"]: r for r in report.to_pylist()}
    assert report.num_rows == 2 and set(rows) == {"x1", "x2"}
    window = pa.concat_tables(batches[2:])
    assert rows["x1"]["served_rows"] == window.num_rows == 800
    assert rows["x1"]["training_rows"] == training.num_rows
    expected = psi(training["x1"].to_numpy(), window["x1"].to_numpy())
    assert rows["x1"]["psi"] == pytest.approx(expected)
    assert rows["x1"]["status"] == "drift" and rows["x2"]["status"] == "stable"
    for row in rows.values():
        assert row["model"] == "tiny" and row["version"] == 1
        assert row["training_table"] == "ml.train" and row["training_snapshot_id"] == trained_on
        assert row["served_since"] == start
        assert row["served_first_ts"] == start + timedelta(minutes=2)
        assert row["served_last_ts"] == start + timedelta(minutes=9)
        assert row["computed_at"] > start

    # Each run appends its rows; the version's earlier reports stay.
    assert drift_job.main(argv, settings=settings) == 0
    again = asyncio.run(lake.scan("ml.drift"))
    assert again.num_rows == 4
    assert pc.count_distinct(again["computed_at"]).as_py() == 2
    capsys.readouterr()

    # No logged rows for the window: one typed line, exit 2.
    late = (start + timedelta(days=30)).isoformat()
    assert drift_job.main(["tiny", "--version", "1", "--since", late], settings=settings) == 2
    assert "has no rows for model 'tiny' version 1 since" in _text(capsys)
