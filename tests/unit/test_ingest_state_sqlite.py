"""Ingest bookkeeping on the embedded SQLite platform database, plus the pure helpers."""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path

import pytest

from actors.ingest.sources.base import InputRef, SourcePlan, StateView
from actors.ingest.state import (
    RUN_ID_SUMMARY_KEY,
    committed_run_ids,
    input_key,
    new_run_id,
)
from actors.lake.describe import SnapshotInfo
from cluster.settings import Settings
from tests.contracts.ingest_state import IngestStateContract


class TestIngestStateOnSqlite(IngestStateContract):
    @pytest.fixture
    def db_settings(self, data_dir: Path) -> Settings:
        return Settings(data_dir=data_dir)


def test_committed_run_ids_come_from_snapshot_summaries() -> None:
    when = datetime(2026, 1, 1, tzinfo=UTC)
    history = [
        {"snapshot_id": 1, "summary": {RUN_ID_SUMMARY_KEY: "run_a"}},
        {"snapshot_id": 2, "summary": {}},
        SnapshotInfo(3, 2, when, "append", {RUN_ID_SUMMARY_KEY: "run_b", "x": "y"}),
        SnapshotInfo(4, 3, when, "append"),
    ]
    assert committed_run_ids(history) == {"run_a", "run_b"}


def test_run_ids_and_input_keys() -> None:
    run_id = new_run_id(datetime(2026, 3, 4, 5, 6, 7, tzinfo=UTC))
    assert run_id.startswith("run_20260304T050607_") and len(run_id) <= 64
    key = input_key("p", "s", "file", "/a", "1:2")
    assert len(key) == 64 and key != input_key("p", "s", "file", "/a", "1:3")


def test_plans_round_trip_as_json_without_bodies() -> None:
    ref = InputRef(kind="message", id="m1", size=3, delivery_tag=7, body=b"abc")
    plan = SourcePlan(source="q", kind="rabbitmq", refs=(ref,), redelivered=(ref,), skipped=1)
    data = plan.to_dict()
    assert "body" not in str(data) and "delivery_tag" not in str(data)
    again = SourcePlan.from_dict(data)
    assert again == plan  # bodies and delivery tags do not take part in equality
    assert again.refs[0].body is None


def test_state_view_lookups() -> None:
    view = StateView("p", frozenset({("s", "file", "/a", "1:2")}), {"db": "x"})
    assert view.has("s", "file", "/a", "1:2") and not view.has("s", "file", "/a")
    assert view.position("db") == "x" and view.position("other") is None
