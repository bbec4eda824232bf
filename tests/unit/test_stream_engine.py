"""WindowedAggregator against a brute-force per-event reference (no Ray)."""

from __future__ import annotations

import itertools
import random
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from pydantic import ValidationError

from actors.stream.config import StreamConfig
from actors.stream.engine import EmitResult, WindowedAggregator
from cluster.errors import InvalidInputError, PlatformStateError
from tests.unit import stream_reference as ref

AGGS = [
    {"fn": "count", "as": "n"},
    {"column": "v", "fn": "sum", "as": "total"},
    {"column": "v", "fn": "mean", "as": "avg"},
    {"column": "v", "fn": "min", "as": "lo"},
    {"column": "v", "fn": "max", "as": "hi"},
    {"column": "v", "fn": "first", "as": "first_v"},
    {"column": "v", "fn": "last", "as": "last_v"},
    {"column": "v", "fn": "distinct", "as": "uniq"},
    {"column": "v", "fn": "quantile", "q": 0.5, "as": "p50"},
    {"column": "v", "fn": "quantile", "q": 0.9, "as": "p90"},
]
# Without first/last/distinct/quantile the engine takes its unordered fast paths.
PLAIN_AGGS = [a for a in AGGS if a["fn"] not in ("first", "last", "distinct", "quantile")]
WINDOWS = {
    "tumbling": {"kind": "tumbling", "size_s": 10},
    "sliding": {"kind": "sliding", "size_s": 10, "slide_s": 5},
    "session": {"kind": "session", "gap_s": 4},
}


def make_config(
    window: dict[str, Any], delay: int = 0, lateness: int = 0, aggs: list[Any] = AGGS
) -> StreamConfig:
    return StreamConfig.model_validate(
        {
            "time_column": "t",
            "key_columns": ["k"],
            "window": window,
            "aggregations": aggs,
            "max_delay_s": delay,
            "allowed_lateness_s": lateness,
        }
    )


def to_table(batch: list[ref.Event]) -> pa.Table:
    keys, times, values = zip(*batch, strict=True) if batch else ((), (), ())
    return pa.table(
        {
            "k": pa.array(keys, pa.string()),
            "t": pa.array(times, pa.int64()),
            "v": pa.array(values, pa.int64()),
        }
    )


class Collector:
    """Applies emissions in order: retractions remove, results upsert."""

    def __init__(self) -> None:
        self.windows: dict[tuple, dict[str, Any]] = {}
        self.late = 0

    def apply(self, out: EmitResult) -> None:
        self.late += out.late.num_rows
        if out.retractions.num_rows:
            for row in _ticks(out.retractions).to_pylist():
                self.windows.pop((row["k"], row["window_start"], row["window_end"]))
        if out.results.num_rows:
            for row in _ticks(out.results).to_pylist():
                key = (row.pop("k"), row.pop("window_start"), row.pop("window_end"))
                row.pop("is_update")
                self.windows[key] = row


def _ticks(table: pa.Table) -> pa.Table:
    for name in ("window_start", "window_end"):
        idx = table.schema.get_field_index(name)
        table = table.set_column(idx, name, pc.cast(table.column(name), pa.int64()))
    return table


def run_engine(engine: WindowedAggregator, batches: list[list[ref.Event]], c: Collector) -> None:
    for batch in batches:
        c.apply(engine.process(to_table(batch)))


@st.composite
def streams(draw: st.DrawFn) -> list[list[ref.Event]]:
    """Out-of-order, duplicated events split into random batches."""
    event = st.tuples(st.sampled_from("abc"), st.integers(0, 60), st.integers(-5, 5))
    events = draw(st.lists(event, min_size=1, max_size=60))
    events += draw(st.lists(st.sampled_from(events), max_size=10))  # duplicates
    events = draw(st.permutations(events))
    cuts = sorted(draw(st.lists(st.integers(0, len(events)), max_size=6)))
    bounds = [0, *cuts, len(events)]
    return [events[a:b] for a, b in itertools.pairwise(bounds)]


def assert_matches(
    collected: Collector, expected: dict[tuple, dict[str, Any]], aggs: list[Any] = AGGS
) -> None:
    assert collected.windows.keys() == expected.keys()
    names = {a["as"] for a in aggs}
    for key, full in expected.items():
        got = collected.windows[key]
        want = {k: v for k, v in full.items() if k in names}
        if "avg" in want:
            assert got["avg"] == pytest.approx(want.pop("avg"))
        assert {k: got[k] for k in want} == want, key


@pytest.mark.parametrize("aggs", [AGGS, PLAIN_AGGS], ids=["all-aggs", "plain-aggs"])
@pytest.mark.parametrize("kind", sorted(WINDOWS))
@settings(max_examples=30, deadline=None)
@given(batches=streams(), delay=st.sampled_from([0, 3]), lateness=st.sampled_from([0, 4]))
def test_engine_matches_reference(
    kind: str, aggs: list[Any], batches: list[list[ref.Event]], delay: int, lateness: int
) -> None:
    window = WINDOWS[kind]
    engine = WindowedAggregator(make_config(window, delay, lateness, aggs))
    collected = Collector()
    run_engine(engine, batches, collected)
    collected.apply(engine.flush())
    expected, late = ref.run(batches, window, delay, lateness)
    assert_matches(collected, expected, aggs)
    assert collected.late == late
    # Nothing is dropped: every (event, window) pair is counted or reported late.
    pairs = sum(len(ref.windows_of(t, window)) for b in batches for _, t, _ in b)
    assert sum(w["n"] for w in collected.windows.values()) + collected.late == pairs


@pytest.mark.parametrize("kind", sorted(WINDOWS))
@settings(max_examples=20, deadline=None)
@given(batches=streams(), at=st.integers(0, 7))
def test_snapshot_restore_continues_identically(
    kind: str, batches: list[list[ref.Event]], at: int
) -> None:
    config = make_config(WINDOWS[kind], delay=2, lateness=3)
    straight, resumed = Collector(), Collector()
    run_engine(WindowedAggregator(config), batches, straight)
    first = WindowedAggregator(config)
    run_engine(first, batches[:at], resumed)
    second = WindowedAggregator(config)
    second.restore(first.snapshot())
    run_engine(second, batches[at:], resumed)
    assert resumed.windows == straight.windows
    assert resumed.late == straight.late


def test_late_event_updates_emitted_window_then_goes_to_late_output() -> None:
    engine = WindowedAggregator(make_config(WINDOWS["tumbling"], delay=0, lateness=5))
    first = engine.process(to_table([("a", 3, 1), ("a", 12, 2)]))
    assert first.results.column("n").to_pylist() == [1]
    update = engine.process(to_table([("a", 4, 10)]))  # window [0,10) ended, lateness holds
    assert update.results.column("is_update").to_pylist() == [True]
    assert update.results.column("total").to_pylist() == [11]
    engine.process(to_table([("a", 30, 0)]))  # watermark 30 >= 10 + 5: state for [0,10) gone
    late = engine.process(to_table([("a", 5, 7)]))
    assert late.results.num_rows == 0
    assert late.late.column("reason").to_pylist() == ["too_late"]
    assert late.late.column("v").to_pylist() == [7]


def test_null_event_time_goes_to_late_output() -> None:
    engine = WindowedAggregator(make_config(WINDOWS["tumbling"]))
    table = pa.table({"k": ["a", "a"], "t": pa.array([None, 1], pa.int64()), "v": [1, 2]})
    out = engine.process(table)
    assert out.late.column("reason").to_pylist() == ["null_event_time"]
    assert engine.flush().results.column("n").to_pylist() == [1]


def test_session_merge_retracts_emitted_sessions() -> None:
    engine = WindowedAggregator(make_config(WINDOWS["session"], delay=0, lateness=40))
    out = engine.process(to_table([("a", 0, 1), ("a", 6, 2), ("a", 30, 0)]))
    assert out.results.num_rows == 2  # [0,4) and [6,10) closed by watermark 30
    out = engine.process(to_table([("a", 3, 5)]))  # [3,7) bridges both: one session [0, 10)
    assert out.retractions.num_rows == 2
    assert _ticks(out.results).select(["window_start", "window_end", "n"]).to_pylist() == [
        {"window_start": 0, "window_end": 10_000_000, "n": 3}
    ]


def test_where_and_derive_expressions() -> None:
    config = StreamConfig.model_validate(
        {
            "time_column": "t",
            "key_columns": ["k"],
            "window": WINDOWS["tumbling"],
            "aggregations": [{"column": "cents", "fn": "sum", "as": "total"}],
        }
    )
    engine = WindowedAggregator(
        config,
        where=pc.field("v") > 0,
        derive={"cents": pc.multiply(pc.field("v"), 100)},
    )
    engine.process(to_table([("a", 1, 2), ("a", 2, -3), ("a", 3, 1)]))
    assert engine.flush().results.column("total").to_pylist() == [300]


def test_timestamp_time_column() -> None:
    engine = WindowedAggregator(make_config(WINDOWS["tumbling"]))
    t = pa.array([1_000, 11_000], pa.timestamp("ms", tz="UTC"))
    first = _ticks(engine.process(pa.table({"k": ["a", "a"], "t": t, "v": [1, 2]})).results)
    second = _ticks(engine.flush().results)
    assert first.column("window_start").to_pylist() == [0]  # watermark 11 s closed [0, 10)
    assert second.column("window_start").to_pylist() == [10_000_000]


def test_large_random_stream_splits_consistently() -> None:
    rng = random.Random(7)
    events = [
        (f"k{rng.randrange(50)}", rng.randrange(500), rng.randrange(100)) for _ in range(3000)
    ]
    window = WINDOWS["sliding"]
    batches = [events[i : i + 250] for i in range(0, len(events), 250)]
    engine = WindowedAggregator(make_config(window, delay=30, lateness=10))
    collected = Collector()
    run_engine(engine, batches, collected)
    collected.apply(engine.flush())
    expected, late = ref.run(batches, window, 30, 10)
    assert_matches(collected, expected)
    assert collected.late == late


def test_missing_column_is_a_typed_error() -> None:
    engine = WindowedAggregator(make_config(WINDOWS["tumbling"]))
    with pytest.raises(InvalidInputError, match="'v'"):
        engine.process(pa.table({"k": ["a"], "t": [1]}))


def test_restore_rejects_other_config() -> None:
    snap = WindowedAggregator(make_config(WINDOWS["tumbling"])).snapshot()
    with pytest.raises(PlatformStateError, match="different StreamConfig"):
        WindowedAggregator(make_config(WINDOWS["sliding"])).restore(snap)


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"window": {"kind": "sliding", "size_s": 5, "slide_s": 10}}, "slide_s=10.0 exceeds"),
        ({"aggregations": [{"fn": "sum", "as": "x"}]}, "fn=sum needs a column"),
        ({"aggregations": [{"column": "v", "fn": "quantile", "as": "x"}]}, "q=None"),
        ({"aggregations": [{"fn": "count", "as": "n"}, {"fn": "count", "as": "n"}]}, "['n']"),
        ({"aggregations": [{"fn": "count", "as": "window_end"}]}, "reserved"),
        ({"max_delay_s": -1}, "greater than or equal to 0"),
    ],
)
def test_config_validation_messages(change: dict[str, Any], message: str) -> None:
    base = {"time_column": "t", "key_columns": ["k"], "window": WINDOWS["tumbling"]}
    base["aggregations"] = [{"fn": "count", "as": "n"}]
    with pytest.raises(ValidationError) as info:
        StreamConfig.model_validate({**base, **change})
    assert message in str(info.value)
