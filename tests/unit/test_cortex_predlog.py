"""The prediction log: rows per request, a bounded buffer, a flusher into the Lake."""

from __future__ import annotations

import asyncio
import logging
import re
import threading
from collections.abc import Callable
from datetime import UTC, datetime, timedelta, timezone
from pathlib import Path

import numpy as np
import pyarrow as pa
import pytest

from actors.cortex.predlog import (
    METADATA_COLUMNS,
    PredictionBuffer,
    PredictionLogger,
    feature_columns,
    lake_append,
    log_table_name,
    prediction_rows,
)
from actors.forge.registry import NAME_PATTERN
from actors.lake.core import LakeCore
from actors.lake.service import LakeService
from actors.lake.specs import parse_table_name
from cluster.errors import InvalidInputError
from cluster.settings import Settings

AT = datetime(2026, 11, 26, 10, 0, 0, 123456, tzinfo=UTC)


def features(rows: int, names: tuple[str, ...] = ("age", "bmi")) -> pa.Table:
    return pa.table(
        {n: pa.array(np.arange(rows, dtype=np.float64) + i) for i, n in enumerate(names)}
    )


def regression_rows(rows: int, request_id: str = "req-1", version: int = 3) -> pa.Table:
    return prediction_rows(
        request_id=request_id,
        model="churn",
        version=version,
        latency_ms=4.5,
        features=features(rows),
        outputs={"prediction": np.linspace(0, 1, rows)},
        at=AT,
    )


def ids(table: pa.Table) -> list[str]:
    return table.column("request_id").to_pylist()


# ---- table names and rows ---------------------------------------------------------------------


@pytest.mark.parametrize(
    "model", ["churn", "churn_v2", "churn.v2", "churn-v2", "a", "x" * 100, "m.-_9"]
)
def test_log_table_names_are_valid_lake_names(model: str) -> None:
    assert re.fullmatch(NAME_PATTERN, model)
    name = log_table_name("cortex", model)
    assert parse_table_name(name).full == name
    assert name.startswith("cortex.") and name.endswith("_predictions")


def test_plain_model_names_are_kept_and_others_do_not_collide() -> None:
    assert log_table_name("cortex", "churn_v2") == "cortex.churn_v2_predictions"
    names = {log_table_name("cortex", m) for m in ["churn_v2", "churn.v2", "churn-v2", "churn.v_2"]}
    assert len(names) == 4


def test_a_bad_namespace_is_refused() -> None:
    with pytest.raises(InvalidInputError, match="namespace"):
        log_table_name("not ok", "churn")


def test_regression_rows_carry_metadata_features_and_prediction() -> None:
    table = regression_rows(3)
    assert table.schema == pa.schema(
        [
            ("request_id", pa.string()),
            ("ts", pa.timestamp("us", tz="UTC")),
            ("model", pa.string()),
            ("version", pa.int64()),
            ("latency_ms", pa.float64()),
            ("age", pa.float64()),
            ("bmi", pa.float64()),
            ("prediction", pa.float64()),
        ]
    )
    assert ids(table) == ["req-1"] * 3
    assert table.column("ts").to_pylist() == [AT] * 3
    assert table.column("version").to_pylist() == [3] * 3
    assert table.column("bmi").to_pylist() == [1.0, 2.0, 3.0]
    assert table.column("prediction").to_pylist() == [0.0, 0.5, 1.0]


def test_classification_rows_have_int_classes_and_probabilities() -> None:
    probabilities = np.array([[0.2, 0.8], [0.9, 0.1]])
    table = prediction_rows(
        request_id="r",
        model="churn",
        version=1,
        latency_ms=1.0,
        features=features(2),
        outputs={"prediction": np.array([1, 0], dtype=np.int64), "probabilities": probabilities},
        at=AT.astimezone(timezone(timedelta(hours=2))),  # any zone: stored as UTC
    )
    assert table.schema.field("prediction").type == pa.int64()
    assert table.schema.field("probabilities").type == pa.list_(pa.float64())
    assert table.column("probabilities").to_pylist() == [[0.2, 0.8], [0.9, 0.1]]
    assert table.column("ts").to_pylist() == [AT, AT]


def test_features_named_like_metadata_are_prefixed_deterministically() -> None:
    mapping = feature_columns(["age", "version", "model", "feature_model"])
    assert mapping == {
        "age": "age",
        "version": "feature_version",
        "model": "feature_feature_model",  # feature_model is a real feature: skip it
        "feature_model": "feature_model",
    }
    assert set(mapping.values()).isdisjoint(METADATA_COLUMNS)
    table = prediction_rows(
        request_id="r",
        model="churn",
        version=2,
        latency_ms=1.0,
        features=features(1, ("version", "age")),
        outputs={"prediction": np.array([7.0])},
        at=AT,
    )
    assert table.column("version").to_pylist() == [2]
    assert table.column("feature_version").to_pylist() == [0.0]


def test_rows_and_outputs_must_agree_and_time_must_be_aware() -> None:
    with pytest.raises(InvalidInputError, match="one per feature row"):
        prediction_rows(
            request_id="r",
            model="m",
            version=1,
            latency_ms=1.0,
            features=features(2),
            outputs={"prediction": np.zeros(3)},
            at=AT,
        )
    with pytest.raises(InvalidInputError, match="aware"):
        prediction_rows(
            request_id="r",
            model="m",
            version=1,
            latency_ms=1.0,
            features=features(1),
            outputs={"prediction": np.zeros(1)},
            at=datetime(2026, 1, 1),
        )


# ---- the buffer ----------------------------------------------------------------------------------


def test_a_full_buffer_drops_and_counts_instead_of_blocking() -> None:
    buffer = PredictionBuffer(capacity_rows=10)
    assert buffer.offer("t", regression_rows(6, "a"))
    assert not buffer.offer("t", regression_rows(5, "b"))  # 11 > 10: the whole batch goes
    assert buffer.offer("t", regression_rows(4, "c"))  # exactly full is fine
    assert not buffer.offer("t", regression_rows(1, "d"))
    assert (buffer.buffered_rows, buffer.dropped_rows) == (10, 6)
    drained = buffer.drain()
    assert ids(drained["t"]) == ["a"] * 6 + ["c"] * 4
    assert (buffer.buffered_rows, buffer.drain()) == (0, {})


def test_drain_groups_per_table_in_arrival_order() -> None:
    buffer = PredictionBuffer(capacity_rows=100)
    for request, table in [("a", "t1"), ("b", "t2"), ("c", "t1")]:
        buffer.offer(table, regression_rows(2, request))
    drained = buffer.drain()
    assert ids(drained["t1"]) == ["a", "a", "c", "c"]
    assert ids(drained["t2"]) == ["b", "b"]


def test_batches_of_different_versions_concatenate() -> None:
    buffer = PredictionBuffer(capacity_rows=100)
    buffer.offer("t", regression_rows(1, "a"))
    other = prediction_rows(
        request_id="b",
        model="churn",
        version=4,
        latency_ms=1.0,
        features=features(1, ("age", "height")),
        outputs={"prediction": np.zeros(1)},
        at=AT,
    )
    buffer.offer("t", other)
    table = buffer.drain()["t"]
    assert table.column("bmi").to_pylist() == [1.0, None]
    assert table.column("height").to_pylist() == [None, 1.0]


def test_requeue_puts_failed_rows_first_and_drops_what_no_longer_fits() -> None:
    buffer = PredictionBuffer(capacity_rows=10)
    buffer.offer("t1", regression_rows(3, "old1"))
    buffer.offer("t2", regression_rows(4, "old2"))
    failed = buffer.drain()
    buffer.offer("t1", regression_rows(2, "new"))  # arrived while the flush was failing
    buffer.requeue(failed)
    assert (buffer.buffered_rows, buffer.dropped_rows) == (9, 0)
    drained = buffer.drain()
    assert ids(drained["t1"]) == ["old1"] * 3 + ["new"] * 2
    assert ids(drained["t2"]) == ["old2"] * 4

    buffer.offer("t1", regression_rows(5, "newer"))
    buffer.requeue(drained)  # 5 old t1 rows fit beside 5 new, the 4 t2 rows do not
    assert (buffer.buffered_rows, buffer.dropped_rows) == (10, 4)
    again = buffer.drain()
    assert ids(again["t1"]) == ["old1"] * 3 + ["new"] * 2 + ["newer"] * 5
    assert "t2" not in again


def test_concurrent_offers_and_drains_lose_and_invent_nothing() -> None:
    buffer = PredictionBuffer(capacity_rows=500)
    batch = regression_rows(3)
    threads, per_thread = 8, 400
    accepted = [0] * threads
    drained_rows = []
    done = threading.Event()

    def producer(index: int) -> None:
        for _ in range(per_thread):
            accepted[index] += 3 * buffer.offer(f"t{index % 2}", batch)

    def consumer() -> None:
        while not done.is_set():
            drained_rows.append(sum(t.num_rows for t in buffer.drain().values()))

    workers = [threading.Thread(target=producer, args=(i,)) for i in range(threads)]
    drainer = threading.Thread(target=consumer)
    drainer.start()
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join()
    done.set()
    drainer.join()
    drained_rows.append(sum(t.num_rows for t in buffer.drain().values()))
    offered = threads * per_thread * 3
    assert sum(accepted) == sum(drained_rows)
    assert sum(accepted) + buffer.dropped_rows == offered
    assert buffer.buffered_rows == 0


# ---- the flusher ----------------------------------------------------------------------


class FakeClock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


class Recorder:
    """An append that keeps what it was given, failing while told to."""

    def __init__(self) -> None:
        self.calls: list[tuple[str, pa.Table]] = []
        self.fail = False

    async def __call__(self, name: str, rows: pa.Table) -> None:
        if self.fail:
            raise ConnectionError("lake is down")
        self.calls.append((name, rows))


async def wait_until(condition: Callable[[], object], timeout: float = 5.0) -> None:
    deadline = asyncio.get_running_loop().time() + timeout
    while not condition():
        assert asyncio.get_running_loop().time() < deadline, "condition never held"
        await asyncio.sleep(0.01)


async def test_the_flusher_writes_when_enough_rows_wait() -> None:
    buffer, append, clock = PredictionBuffer(100), Recorder(), FakeClock()
    logger = PredictionLogger(buffer, append, flush_rows=5, flush_s=60, clock=clock, poll_s=0.01)
    await logger.start()
    buffer.offer("t", regression_rows(2))
    await asyncio.sleep(0.1)
    assert append.calls == []  # 2 < 5 rows and no time has passed
    buffer.offer("t", regression_rows(3))
    await wait_until(lambda: append.calls)
    assert [rows.num_rows for _, rows in append.calls] == [5]
    await logger.stop()
    assert logger.stats()["flushed_rows"] == 5 and not logger.stats()["running"]


async def test_the_flusher_writes_when_time_passes() -> None:
    buffer, append, clock = PredictionBuffer(100), Recorder(), FakeClock()
    logger = PredictionLogger(buffer, append, flush_rows=50, flush_s=2.0, clock=clock, poll_s=0.01)
    await logger.start()
    buffer.offer("t", regression_rows(1))
    await asyncio.sleep(0.1)
    assert append.calls == []
    clock.now = 2.5
    await wait_until(lambda: append.calls)
    await logger.stop()


async def test_a_failed_append_warns_requeues_and_retries_after_flush_s(
    caplog: pytest.LogCaptureFixture,
) -> None:
    buffer, append, clock = PredictionBuffer(100), Recorder(), FakeClock()
    logger = PredictionLogger(buffer, append, flush_rows=1, flush_s=10.0, clock=clock, poll_s=0.01)
    append.fail = True
    buffer.offer("t", regression_rows(2, "first"))
    with caplog.at_level(logging.WARNING, logger="actors.cortex.predlog"):
        assert await logger.flush() == 0
    assert "lake is down" in caplog.text
    assert logger.stats()["failed_flushes"] == 1 and buffer.buffered_rows == 2
    await logger.start()
    append.fail = False
    buffer.offer("t", regression_rows(1, "second"))
    await asyncio.sleep(0.1)
    assert append.calls == []  # backing off: rows alone do not retry a failing Lake
    clock.now = 11.0
    await wait_until(lambda: append.calls)
    await logger.stop()
    [(name, rows)] = append.calls
    assert name == "t" and ids(rows) == ["first", "first", "second"]
    stats = logger.stats()
    assert stats["failed_flushes"] == 1 and stats["flushed_rows"] == 3
    assert stats["buffered_rows"] == 0 and stats["last_error"] == "ConnectionError: lake is down"


async def test_stop_flushes_what_is_left() -> None:
    buffer, append = PredictionBuffer(100), Recorder()
    logger = PredictionLogger(buffer, append, flush_rows=1_000, flush_s=3600)
    await logger.start()
    buffer.offer("t1", regression_rows(2))
    buffer.offer("t2", regression_rows(3))
    await logger.stop()
    assert sorted((n, r.num_rows) for n, r in append.calls) == [("t1", 2), ("t2", 3)]


async def test_rows_land_in_a_real_lake_table(data_dir: Path) -> None:
    lake = LakeService(LakeCore(Settings(data_dir=data_dir), 0, sleep=lambda _s: None))
    buffer = PredictionBuffer(1_000)
    logger = PredictionLogger(buffer, lake_append(lake), flush_rows=3, flush_s=60, poll_s=0.01)
    table_name = log_table_name("cortex", "churn.v2")
    await logger.start()
    classes = prediction_rows(
        request_id="req-9",
        model="churn.v2",
        version=2,
        latency_ms=3.25,
        features=features(2, ("age", "model")),
        outputs={
            "prediction": np.array([1, 0], dtype=np.int64),
            "probabilities": np.array([[0.25, 0.75], [0.5, 0.5]]),
        },
        at=AT,
    )
    buffer.offer(table_name, classes)
    buffer.offer(table_name, classes)
    await wait_until(lambda: logger.stats()["flushed_rows"] == 4)
    buffer.offer(table_name, classes)  # a second append to the table that now exists
    await logger.stop()
    stored = (await lake.scan(table_name)).sort_by("feature_model")
    assert stored.num_rows == 6
    assert set(stored.schema.names) == {
        *METADATA_COLUMNS[:5],
        "age",
        "feature_model",
        "prediction",
        "probabilities",
    }
    assert stored.column("request_id").to_pylist() == ["req-9"] * 6
    assert stored.column("ts").to_pylist() == [AT] * 6
    assert stored.column("probabilities").to_pylist()[:3] == [[0.25, 0.75]] * 3
    assert stored.column("prediction").to_pylist() == [1, 1, 1, 0, 0, 0]
    assert logger.stats()["failed_flushes"] == 0
