"""SequenceDetector: examples, and properties against a per-event Python reference."""

from __future__ import annotations

import itertools
import json
from typing import Any

import pyarrow as pa
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from actors.stream.pattern_spec import AllOf, AnyOf, Cond, evaluate
from actors.stream.patterns import SequenceDetector
from cluster.errors import InvalidInputError

A = Cond(column="e", op="=", value="a")
B = Cond(column="e", op="=", value="b")
C = Cond(column="e", op="=", value="c")
SCHEMA = pa.schema([("k", pa.string()), ("t", pa.int64()), ("e", pa.string())])


def _batch(rows: list[tuple[str, int, str]]) -> pa.Table:
    return pa.Table.from_pylist([{"k": k, "t": t, "e": e} for k, t, e in rows], schema=SCHEMA)


def _detector(**overrides: Any) -> SequenceDetector:
    config: dict[str, Any] = {
        "steps": [A, B],
        "within_s": 300,
        "key_columns": ["k"],
        "time_column": "t",
        "absent": C,
    }
    config.update(overrides)
    return SequenceDetector(**config)


def _summary(table: pa.Table) -> list[tuple[str, str, list[tuple[int, str]]]]:
    rows = table.to_pylist()
    return sorted((r["k"], r["match_id"], [(e["t"], e["e"]) for e in r["events"]]) for r in rows)


def _run(detector: SequenceDetector, batches: list[pa.Table]) -> tuple[list[Any], list[Any]]:
    matches: list[Any] = []
    late: list[Any] = []
    for batch in batches:
        result = detector.process(batch)
        matches.extend(_summary(result.matches))
        late.extend(result.late.to_pylist())
    return sorted(matches), late


# ---------------------------------------------------------------- examples
def test_a_then_b_within_bound_matches_with_its_events() -> None:
    result = _detector().process(_batch([("x", 0, "a"), ("x", 60, "z"), ("x", 299, "b")]))
    assert result.matches.num_rows == 1
    row = result.matches.to_pylist()[0]
    assert (row["k"], row["start_time"], row["end_time"]) == ("x", 0, 299)
    assert [e["e"] for e in row["events"]] == ["a", "b"]
    assert json.loads(row["match_id"]) == ["x", 0]


def test_b_too_late_does_not_match() -> None:
    result = _detector().process(_batch([("x", 0, "a"), ("x", 301, "b")]))
    assert result.matches.num_rows == 0


def test_absent_between_cancels() -> None:
    result = _detector().process(_batch([("x", 0, "a"), ("x", 10, "c"), ("x", 20, "b")]))
    assert result.matches.num_rows == 0


def test_absent_only_cancels_earlier_partials() -> None:
    result = _detector().process(_batch([("x", 0, "a"), ("x", 10, "c"), ("x", 15, "a")]))
    assert result.matches.num_rows == 0
    detector = _detector()
    detector.process(_batch([("x", 0, "a"), ("x", 10, "c"), ("x", 15, "a")]))
    assert _summary(detector.process(_batch([("x", 20, "b")])).matches)[0][2] == [
        (15, "a"),
        (20, "b"),
    ]


def test_match_across_batch_boundaries() -> None:
    detector = _detector()
    assert detector.process(_batch([("x", 0, "a")])).matches.num_rows == 0
    assert detector.partial_count() == 1
    assert detector.process(_batch([("x", 100, "b")])).matches.num_rows == 1
    assert detector.partial_count() == 0


def test_keys_are_isolated() -> None:
    result = _detector().process(_batch([("x", 0, "a"), ("y", 10, "b"), ("y", 20, "c")]))
    assert result.matches.num_rows == 0
    result = _detector().process(_batch([("x", 0, "a"), ("y", 5, "c"), ("x", 10, "b")]))
    assert [r["k"] for r in result.matches.to_pylist()] == ["x"]


def test_unsorted_batch_is_sorted_by_time() -> None:
    result = _detector().process(_batch([("x", 50, "b"), ("x", 0, "a")]))
    assert result.matches.num_rows == 1


def test_late_events_are_reported_not_dropped() -> None:
    detector = _detector(max_delay_s=10)
    detector.process(_batch([("x", 100, "a")]))
    result = detector.process(_batch([("x", 95, "b"), ("x", 50, "b")]))
    assert [r["t"] for r in result.late.to_pylist()] == [50]
    assert result.matches.num_rows == 0  # 95 precedes the partial's start at 100


def test_partials_expire_against_max_time_seen() -> None:
    detector = _detector()
    detector.process(_batch([("x", 0, "a")]))
    detector.process(_batch([("y", 1000, "z")]))
    assert detector.partial_count() == 0


def test_compound_conditions_and_in() -> None:
    table = pa.table({"e": ["a", "b", "c", None], "n": [1, 5, 9, 2]})
    cond = AnyOf(
        any=[
            AllOf(
                all=[Cond(column="e", op="in", value=["a", "b"]), Cond(column="n", op=">", value=2)]
            ),
            Cond(column="n", op="<=", value=1),
        ]
    )
    assert evaluate(cond, table).tolist() == [True, True, False, False]


def test_spec_loads_from_json_and_names_bad_column() -> None:
    spec = AllOf.model_validate({"all": [{"kind": "cond", "column": "q", "op": "=", "value": 1}]})
    with pytest.raises(InvalidInputError, match="'q'"):
        evaluate(spec, pa.table({"e": [1]}))


def test_schema_change_is_a_typed_error() -> None:
    detector = _detector()
    detector.process(_batch([("x", 0, "a")]))
    with pytest.raises(InvalidInputError, match="schema"):
        detector.process(pa.table({"k": ["x"], "t": [1.5], "e": ["a"]}))


def test_timestamp_time_column() -> None:
    batch = pa.table(
        {
            "k": ["x", "x"],
            "t": pa.array([0, 120_000], type=pa.timestamp("ms")),
            "e": ["a", "b"],
        }
    )
    matches = _detector().process(batch).matches
    assert matches.num_rows == 1
    assert matches.schema.field("start_time").type == pa.timestamp("ms")


# ---------------------------------------------------------------- reference
class _Reference:
    """Per-event Python implementation of the documented semantics (no vectorisation)."""

    def __init__(self, n_steps: int, within: int, max_delay: int) -> None:
        self.n, self.within, self.max_delay = n_steps, within, max_delay
        self.max_seen: int | None = None
        self.partials: dict[str, list[dict[str, Any]]] = {}
        self.counters: dict[str, int] = {}

    def process(self, rows: list[tuple[str, int, str]], steps: list[str]) -> tuple[list, list]:
        floor = None if self.max_seen is None else self.max_seen - self.max_delay
        late = [r for r in rows if floor is not None and r[1] < floor]
        ok = [r for r in rows if not (floor is not None and r[1] < floor)]
        if ok:
            self.max_seen = max([r[1] for r in ok] + ([self.max_seen] if self.max_seen else []))
        matches = []
        for k, t, e in sorted(ok, key=lambda r: (r[0], r[1])):
            matches.extend(self._event(k, t, e, steps))
        return matches, [{"k": k, "t": t, "e": e} for k, t, e in late]

    def _event(self, k: str, t: int, e: str, steps: list[str]) -> list:
        parts = self.partials.setdefault(k, [])
        if e == "c":
            parts[:] = [p for p in parts if p["last"] > t]
        done, kept = [], []
        for p in parts:
            if p["last"] <= t and t - p["start"] <= self.within and steps[p["next"]] == e:
                p["events"].append((t, e))
                p["last"], p["next"] = t, p["next"] + 1
                if p["next"] == self.n:
                    done.append((k, json.dumps([k, p["seq"]]), p["events"]))
                    continue
            kept.append(p)
        if steps[0] == e:
            seq = self.counters.get(k, 0)
            self.counters[k] = seq + 1
            p = {"seq": seq, "next": 1, "start": t, "last": t, "events": [(t, e)]}
            if self.n == 1:
                done.append((k, json.dumps([k, seq]), p["events"]))
            else:
                kept.append(p)
        parts[:] = kept
        return done


events = st.tuples(st.sampled_from(["x", "y"]), st.integers(0, 20), st.sampled_from("aabbcd"))
streams = st.lists(events, max_size=40)
step_lists = st.lists(st.sampled_from("abd"), min_size=1, max_size=3)


def _split(rows: list, cuts: list[int]) -> list[list]:
    points = sorted({c % (len(rows) + 1) for c in cuts} | {0, len(rows)})
    return [rows[a:b] for a, b in itertools.pairwise(points)]


def _steps(letters: list[str]) -> list[Cond]:
    return [Cond(column="e", op="=", value=letter) for letter in letters]


FAST = settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])


@FAST
@given(
    rows=streams,
    cuts=st.lists(st.integers(0, 50), max_size=5),
    letters=step_lists,
    within=st.integers(0, 8),
    max_delay=st.integers(0, 15),
)
def test_matches_per_event_reference(
    rows: list, cuts: list[int], letters: list[str], within: int, max_delay: int
) -> None:
    detector = _detector(steps=_steps(letters), within_s=within, max_delay_s=max_delay)
    reference = _Reference(len(letters), within, max_delay)
    for part in _split(rows, cuts):
        result = detector.process(_batch(part))
        expected, expected_late = reference.process(part, letters)
        assert _summary(result.matches) == sorted(expected)
        assert result.late.to_pylist() == expected_late


@FAST
@given(
    rows=streams,
    cuts_a=st.lists(st.integers(0, 50), max_size=5),
    cuts_b=st.lists(st.integers(0, 50), max_size=5),
    letters=step_lists,
    within=st.integers(0, 8),
)
def test_in_order_streams_match_regardless_of_batching(
    rows: list, cuts_a: list[int], cuts_b: list[int], letters: list[str], within: int
) -> None:
    ordered = sorted(rows, key=lambda r: r[1])
    one = _run(_detector(steps=_steps(letters), within_s=within), _split_batches(ordered, cuts_a))
    two = _run(_detector(steps=_steps(letters), within_s=within), _split_batches(ordered, cuts_b))
    assert one == two
    assert one[1] == []


def _split_batches(rows: list, cuts: list[int]) -> list[pa.Table]:
    return [_batch(part) for part in _split(rows, cuts)]


@FAST
@given(
    rows=streams,
    cuts=st.lists(st.integers(0, 50), min_size=1, max_size=5),
    letters=step_lists,
    within=st.integers(0, 8),
    max_delay=st.integers(0, 15),
    at=st.integers(0, 10),
)
def test_snapshot_restore_mid_stream_equals_uninterrupted(
    rows: list, cuts: list[int], letters: list[str], within: int, max_delay: int, at: int
) -> None:
    batches = _split_batches(rows, cuts)
    config = {"steps": _steps(letters), "within_s": within, "max_delay_s": max_delay}
    whole = _run(_detector(**config), batches)
    first = _detector(**config)
    cut = at % (len(batches) + 1)
    head = _run(first, batches[:cut])
    resumed = _detector(**config)
    resumed.restore(first.snapshot())
    tail = _run(resumed, batches[cut:])
    assert sorted(head[0] + tail[0]) == whole[0]
    assert head[1] + tail[1] == whole[1]


def test_bound_is_inclusive() -> None:
    assert _detector().process(_batch([("x", 0, "a"), ("x", 300, "b")])).matches.num_rows == 1


def test_cleanup_keeps_partials_a_late_event_can_still_complete() -> None:
    detector = _detector(within_s=5, max_delay_s=10)
    detector.process(_batch([("x", 85, "a"), ("y", 100, "z")]))
    assert detector.partial_count() == 1
    assert detector.process(_batch([("x", 90, "b")])).matches.num_rows == 1
