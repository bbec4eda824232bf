"""Window assignment, session merging and watermark classification (pure, no Ray)."""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from actors.stream.config import SessionWindow, SlidingWindow, TumblingWindow
from actors.stream.watermark import NO_WATERMARK, Lateness, Watermark, classify
from actors.stream.windows import (
    assign,
    assign_sliding,
    key_codes,
    merge_intervals,
    to_ticks,
)
from cluster.errors import InvalidInputError

times = st.lists(st.integers(-1000, 1000), max_size=50)


@settings(max_examples=60, deadline=None)
@given(ts=times, size=st.integers(1, 30), per=st.integers(1, 6))
def test_sliding_assignment_matches_enumeration(ts: list[int], size: int, per: int) -> None:
    slide = max(size // per, 1)
    pairs = assign_sliding(np.array(ts, dtype=np.int64), size, slide)
    got = sorted(zip(pairs.rows.tolist(), pairs.starts.tolist(), pairs.ends.tolist(), strict=True))
    want = sorted(
        (i, s, s + size)
        for i, t in enumerate(ts)
        for s in range((t - size) // slide * slide, t + 1, slide)
        if s <= t < s + size
    )
    assert got == want


def test_tumbling_one_window_per_event_including_negative_times() -> None:
    pairs = assign(np.array([-1, 0, 9, 10], dtype=np.int64), TumblingWindow(size_s=1e-5))
    assert pairs.starts.tolist() == [-10, 0, 0, 10]
    assert pairs.ends.tolist() == [0, 10, 10, 20]


def test_sliding_explodes_size_over_slide_windows() -> None:
    pairs = assign(np.array([12_000_000], dtype=np.int64), SlidingWindow(size_s=10, slide_s=5))
    assert sorted(pairs.starts.tolist()) == [5_000_000, 10_000_000]


def test_session_assignment_is_one_gap_per_event() -> None:
    pairs = assign(np.array([0, 3_000_000], dtype=np.int64), SessionWindow(gap_s=2))
    assert pairs.ends.tolist() == [2_000_000, 5_000_000]


def _merge_brute(codes: list[int], starts: list[int], ends: list[int]) -> set[tuple[int, int, int]]:
    out: set[tuple[int, int, int]] = set()
    for code in set(codes):
        spans = sorted((s, e) for c, s, e in zip(codes, starts, ends, strict=True) if c == code)
        cur_s, cur_e = spans[0]
        for s, e in spans[1:]:
            if s < cur_e:
                cur_e = max(cur_e, e)
            else:
                out.add((code, cur_s, cur_e))
                cur_s, cur_e = s, e
        out.add((code, cur_s, cur_e))
    return out


@settings(max_examples=80, deadline=None)
@given(
    rows=st.lists(
        st.tuples(st.integers(0, 3), st.integers(-50, 50), st.integers(1, 15)), max_size=40
    )
)
def test_merge_intervals_matches_brute_force(rows: list[tuple[int, int, int]]) -> None:
    codes = np.array([r[0] for r in rows], dtype=np.int64)
    starts = np.array([r[1] for r in rows], dtype=np.int64)
    ends = starts + np.array([r[2] for r in rows], dtype=np.int64)
    group, ms, me = merge_intervals(codes, starts, ends)
    got = {(int(codes[i]), int(ms[g]), int(me[g])) for i, g in enumerate(group)}
    assert got == _merge_brute(codes.tolist(), starts.tolist(), ends.tolist())
    assert len(ms) == len(got)


def test_key_codes_are_consistent_across_tables_and_nulls() -> None:
    a = pa.table({"k": ["x", None, "y"], "j": [1, 1, 2]})
    b = pa.table({"k": [None, "y", "x"], "j": [1, 2, 2]})
    ca, cb = key_codes([a, b], ["k", "j"])
    assert ca[1] == cb[0] and ca[2] == cb[1] and ca[0] != cb[2]


def test_to_ticks_units_and_errors() -> None:
    assert to_ticks(pa.array([1.5, None]), "t").tolist() == [1_500_000, NO_WATERMARK]
    assert to_ticks(pa.array([2]), "t").tolist() == [2_000_000]
    with pytest.raises(InvalidInputError, match="timestamp or numeric"):
        to_ticks(pa.array(["x"]), "t")


def test_watermark_bounded_out_of_orderness_never_regresses() -> None:
    wm = Watermark(max_delay=5)
    assert wm.value == NO_WATERMARK
    wm = wm.observe(np.array([10, 30, 20]))
    assert wm.value == 25
    assert wm.observe(np.array([1])).value == 25
    assert wm.observe(np.array([], dtype=np.int64)).value == 25


def test_classify_on_time_late_accepted_too_late() -> None:
    ends = np.array([30, 20, 10, 25])
    codes = classify(np.zeros(4), watermark=25, window_end=ends, allowed_lateness=10)
    assert codes.tolist() == [
        Lateness.ON_TIME,
        Lateness.LATE_ACCEPTED,
        Lateness.TOO_LATE,
        Lateness.LATE_ACCEPTED,
    ]
