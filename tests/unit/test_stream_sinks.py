"""Stream sinks: a Lake table written once per epoch, and latest values in the cache."""

from __future__ import annotations

import json
import math
from datetime import UTC, datetime
from decimal import Decimal
from pathlib import Path
from typing import Any

import pyarrow as pa
import pytest

from actors.lake.core import LakeCore
from actors.lake.errors import SchemaMismatchError, UnknownColumnError
from actors.lake.service import LakeService
from actors.stream.sinks import (
    EPOCH_PROPERTY,
    SINK_PROPERTY,
    TOPOLOGY_PROPERTY,
    CacheLatestSink,
    LakeSink,
    committed_epoch,
    latest,
    latest_key,
)
from cluster.cache import MemoryCache
from cluster.errors import InvalidInputError
from cluster.settings import Settings
from tests.clock import FakeClock

TABLE = "streams.clicks_per_minute"
WHEN = datetime(2026, 1, 2, 3, 4, 5, tzinfo=UTC)


def batch(*ids: int, extra: dict[str, list[Any]] | None = None) -> pa.Table:
    columns: dict[str, list[Any]] = {
        "user": [f"u{i}" for i in ids],
        "clicks": list(ids),
        "window_end": [WHEN] * len(ids),
    }
    columns.update(extra or {})
    return pa.table(columns)


@pytest.fixture
def lake(data_dir: Path) -> LakeService:
    return LakeService(LakeCore(Settings(data_dir=data_dir), 0, sleep=lambda _s: None))


def sink(lake: LakeService, name: str = "per_minute", topology: str = "clicks") -> LakeSink:
    return LakeSink(lake, TABLE, topology=topology, name=name)


async def rows_in(lake: LakeService, table: str = TABLE) -> int:
    return (await lake.scan(table)).num_rows


# ---- LakeSink -----------------------------------------------------------------------


async def test_the_first_write_creates_the_namespace_and_table(lake: LakeService) -> None:
    out = sink(lake)
    await out.open()
    assert TABLE not in await lake.list_tables()
    await out.write(1, batch(1, 2, 3))
    assert await rows_in(lake) == 3
    columns = {c["name"]: c for c in (await lake.describe(TABLE))["schema"]}
    assert set(columns) == {"user", "clicks", "window_end"}
    assert not any(c["required"] for c in columns.values())  # later epochs may lack values
    assert out.committed_epoch == 1


async def test_each_epoch_is_one_snapshot_tagged_with_topology_sink_and_epoch(
    lake: LakeService,
) -> None:
    out = sink(lake)
    await out.open()
    await out.write(1, batch(1, 2))
    await out.write(2, batch(3))
    tagged = [h["summary"] for h in await lake.history(TABLE) if h["operation"] == "append"]
    assert [(s[TOPOLOGY_PROPERTY], s[SINK_PROPERTY], s[EPOCH_PROPERTY]) for s in tagged] == [
        ("clicks", "per_minute", "1"),
        ("clicks", "per_minute", "2"),
    ]


async def test_writing_an_epoch_again_adds_nothing(lake: LakeService) -> None:
    out = sink(lake)
    await out.open()
    await out.write(1, batch(1, 2))
    snapshots = len(await lake.history(TABLE))
    await out.write(1, batch(1, 2))
    await out.write(0, batch(9))  # older epochs too
    assert await rows_in(lake) == 2
    assert len(await lake.history(TABLE)) == snapshots


async def test_a_fresh_sink_after_a_restart_skips_the_committed_epoch(lake: LakeService) -> None:
    first = sink(lake)
    await first.open()
    await first.write(1, batch(1, 2))
    await first.write(2, batch(3))
    await first.close()

    restarted = LakeSink(
        LakeService(LakeCore(lake.settings, 1)), TABLE, topology="clicks", name="per_minute"
    )
    await restarted.open()
    assert restarted.committed_epoch == 2
    await restarted.write(2, batch(3))
    assert await rows_in(lake) == 3
    await restarted.write(3, batch(4))
    assert await rows_in(lake) == 4


async def test_write_opens_a_sink_that_was_not_opened(lake: LakeService) -> None:
    await sink(lake).write(1, batch(1))
    again = sink(lake)
    await again.write(1, batch(1))
    assert await rows_in(lake) == 1


async def test_sinks_and_topologies_on_one_table_are_tracked_apart(lake: LakeService) -> None:
    await sink(lake, "a").write(5, batch(1))
    other_sink, other_topology = sink(lake, "b"), sink(lake, "a", topology="other")
    await other_sink.write(1, batch(2))
    await other_topology.write(1, batch(3))
    assert await rows_in(lake) == 3
    for out, epoch in ((sink(lake, "a"), 5), (other_sink, 1), (other_topology, 1)):
        await out.open()
        assert out.committed_epoch == epoch


async def test_empty_rows_commit_nothing(lake: LakeService) -> None:
    out = sink(lake)
    await out.write(1, batch())
    assert TABLE not in await lake.list_tables()  # nothing to create the table from
    await out.write(2, batch(1))
    snapshots = len(await lake.history(TABLE))
    await out.write(3, batch())
    assert len(await lake.history(TABLE)) == snapshots
    assert out.committed_epoch == 2  # an empty epoch needs no replay protection


async def test_a_table_someone_else_created_is_appended_to(lake: LakeService) -> None:
    await lake.create_namespace("streams", exist_ok=True)
    await lake.create_table(TABLE, data=batch(7))
    out = sink(lake)
    await out.open()
    assert out.committed_epoch is None
    await out.write(1, batch(1))
    assert await rows_in(lake) == 2


async def test_new_columns_are_added_by_the_same_commit(lake: LakeService) -> None:
    out = sink(lake)
    await out.write(1, batch(1))
    snapshots = len(await lake.history(TABLE))
    await out.write(2, batch(2, extra={"country": ["pt"]}))
    assert len(await lake.history(TABLE)) == snapshots + 1
    rows = (await lake.scan(TABLE)).sort_by("clicks").to_pylist()
    assert [r["country"] for r in rows] == [None, "pt"]


async def test_without_evolve_new_columns_are_a_typed_error(lake: LakeService) -> None:
    out = LakeSink(lake, TABLE, topology="clicks", name="strict", evolve=False)
    await out.write(1, batch(1))
    with pytest.raises((UnknownColumnError, SchemaMismatchError), match="country"):
        await out.write(2, batch(2, extra={"country": ["pt"]}))
    assert out.committed_epoch == 1  # epoch 2 did not land
    await out.write(2, batch(2))
    assert await rows_in(lake) == 2


async def test_a_commit_whose_reply_was_lost_is_not_written_twice(
    lake: LakeService, monkeypatch: pytest.MonkeyPatch
) -> None:
    out = sink(lake)
    await out.write(1, batch(1))
    real_append = lake.core.append

    def commit_then_fail(*args: Any, **kwargs: Any) -> Any:
        real_append(*args, **kwargs)
        raise ConnectionError("reply lost")

    monkeypatch.setattr(lake.core, "append", commit_then_fail)
    with pytest.raises(ConnectionError):
        await out.write(2, batch(2))
    monkeypatch.setattr(lake.core, "append", real_append)
    await out.write(2, batch(2))  # the retry finds epoch 2 in the history
    assert await rows_in(lake) == 2


def test_committed_epoch_ignores_other_writers_and_junk() -> None:
    def entry(**summary: str) -> dict[str, Any]:
        return {"summary": summary}

    mine = {TOPOLOGY_PROPERTY: "t", SINK_PROPERTY: "s"}
    history = [
        entry(**mine, **{EPOCH_PROPERTY: "3"}),
        entry(**mine, **{EPOCH_PROPERTY: "12"}),
        entry(**mine, **{EPOCH_PROPERTY: "x"}),
        entry(**mine),
        entry(**{TOPOLOGY_PROPERTY: "t", SINK_PROPERTY: "other", EPOCH_PROPERTY: "99"}),
        entry(**{TOPOLOGY_PROPERTY: "u", SINK_PROPERTY: "s", EPOCH_PROPERTY: "99"}),
        {"summary": None},
        {},
    ]
    assert committed_epoch(history, "t", "s") == 12
    assert committed_epoch([], "t", "s") is None


def test_names_are_checked() -> None:
    with pytest.raises(InvalidInputError, match="name"):
        LakeSink(None, TABLE, topology="t", name="")  # type: ignore[arg-type]
    with pytest.raises(InvalidInputError, match="key_columns"):
        CacheLatestSink(MemoryCache(), topology="t", name="n", key_columns="user")


# ---- CacheLatestSink ----------------------------------------------------------------


@pytest.fixture
def cache() -> MemoryCache:
    return MemoryCache(now=FakeClock().monotonic)


async def test_the_last_row_per_key_wins(cache: MemoryCache) -> None:
    out = CacheLatestSink(cache, topology="clicks", name="latest", key_columns=["user"])
    await out.open()
    rows = pa.table(
        {"user": ["a", "b", "a"], "clicks": [1, 2, 3], "window_end": [WHEN, WHEN, WHEN]}
    )
    await out.write(1, rows)
    assert await latest(cache, "clicks", "latest", ["a"]) == {
        "user": "a",
        "clicks": 3,
        "window_end": WHEN.isoformat(),
    }
    assert (await latest(cache, "clicks", "latest", "b") or {})["clicks"] == 2
    assert await latest(cache, "clicks", "latest", ["nobody"]) is None
    assert await cache.get("stream:clicks:latest:a") is not None
    await out.close()


async def test_composite_keys_join_their_values(cache: MemoryCache) -> None:
    out = CacheLatestSink(cache, topology="t", name="n", key_columns=["region", "day", "shop"])
    day = datetime(2026, 1, 2, tzinfo=UTC).date()
    await out.write(1, pa.table({"region": ["eu"], "day": [day], "shop": [None], "v": [1.5]}))
    key = latest_key("t", "n", ["eu", day, None])
    assert key == "stream:t:n:eu|2026-01-02|"
    assert json.loads(await cache.get(key) or b"") == {
        "region": "eu",
        "day": "2026-01-02",
        "shop": None,
        "v": 1.5,
    }


async def test_rewriting_is_idempotent_and_older_epochs_do_not_come_back(
    cache: MemoryCache,
) -> None:
    out = CacheLatestSink(cache, topology="t", name="n", key_columns=["k"])
    await out.write(2, pa.table({"k": [1], "v": ["new"]}))
    await out.write(2, pa.table({"k": [1], "v": ["new"]}))
    await out.write(1, pa.table({"k": [1], "v": ["old"]}))
    assert await latest(cache, "t", "n", [1]) == {"k": 1, "v": "new"}
    await out.write(3, pa.table({"k": [1], "v": ["x"]}).slice(0, 0))
    assert await latest(cache, "t", "n", 1) == {"k": 1, "v": "new"}


async def test_values_json_cannot_write_are_made_json(cache: MemoryCache) -> None:
    out = CacheLatestSink(cache, topology="t", name="n", key_columns=["k"])
    rows = pa.table(
        {
            "k": ["x"],
            "amount": pa.array([Decimal("12.50")], pa.decimal128(6, 2)),
            "blob": [b"\x00\x01"],
            "ratio": [math.nan],
        }
    )
    await out.write(1, rows)
    assert await latest(cache, "t", "n", "x") == {
        "k": "x",
        "amount": "12.50",
        "blob": "AAE=",
        "ratio": None,
    }


async def test_ttl_and_many_keys(cache: MemoryCache) -> None:
    out = CacheLatestSink(cache, topology="t", name="n", key_columns=["k"], ttl_s=30)
    await out.write(1, pa.table({"k": list(range(1000)), "v": list(range(1000))}))
    values = await cache.get_many([latest_key("t", "n", [i]) for i in range(1000)])
    assert [json.loads(v or b"")["v"] for v in values] == list(range(1000))
    assert await cache.ttl(latest_key("t", "n", [0])) == 30


async def test_a_missing_key_column_is_named(cache: MemoryCache) -> None:
    out = CacheLatestSink(cache, topology="t", name="n", key_columns=["user"])
    with pytest.raises(InvalidInputError, match=r"'user'.*clicks"):
        await out.write(1, pa.table({"clicks": [1]}))
