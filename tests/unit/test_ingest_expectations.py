"""Expectations: each rule and action, quarantine rows, the row invariant, schema drift."""

from __future__ import annotations

import re
from datetime import UTC, date, datetime, timedelta
from typing import Any

import pyarrow as pa
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from pydantic import TypeAdapter, ValidationError

from actors.ingest.drift import check_drift, quarantine_drift
from actors.ingest.expectations import ExpectationOutcome, evaluate
from actors.ingest.pipeline_errors import (
    ExpectationConfigError,
    ExpectationFailedError,
    SchemaDriftError,
)
from actors.ingest.quarantine import DQ_COLUMNS, DQ_REASON, DQ_RULE, DQ_RUN_ID, DQ_SOURCE
from actors.ingest.spec import Expectation
from cluster.errors import InvalidInputError

_RULES = TypeAdapter(list[Expectation])
NOW = datetime(2026, 3, 1, 12, 0, tzinfo=UTC)


def check(table: pa.Table, *rules: dict[str, Any], **kwargs: Any) -> ExpectationOutcome:
    kwargs.setdefault("now", NOW)
    kwargs.setdefault("run_id", "run-1")
    outcome = evaluate(table, _RULES.validate_python(list(rules)), **kwargs)
    assert outcome.passed.num_rows + outcome.quarantined.num_rows == table.num_rows
    assert outcome.passed.schema == table.schema
    return outcome


@pytest.fixture
def batch() -> pa.Table:
    return pa.table(
        {
            "id": [1, 2, 2, 3, None, 5],
            "email": ["a@x.io", "b@x.io", None, "nope", "d@x.io", "e@x.io"],
            "amount": [10.0, -5.0, 20.0, 2000.0, None, 30.0],
            "status": ["new", "paid", "paid", "lost", "new", None],
        }
    )


REFS = pa.array([f"data/orders/a.csv:{i + 2}" for i in range(6)])

# rule -> rows of `batch` that violate it
ROW_CASES: list[tuple[dict[str, Any], list[int]]] = [
    ({"rule": "not_null", "column": "email"}, [2]),
    ({"rule": "unique", "columns": ["id"]}, [1, 2]),  # every row of a repeated key; null not judged
    ({"rule": "range", "column": "amount", "min": 0, "max": 1000}, [1, 3]),  # null passes
    ({"rule": "regex", "column": "email", "pattern": "^[^@]+@[^@]+$"}, [3]),
    ({"rule": "allowed_values", "column": "status", "values": ["new", "paid"]}, [3]),
    ({"rule": "sql", "predicate": "amount < 100"}, [3, 4]),  # NULL is not true
]


@pytest.mark.parametrize(("rule", "bad"), ROW_CASES, ids=lambda v: str(v)[:30])
def test_row_rule_warn_reports_and_keeps_rows(
    batch: pa.Table, rule: dict[str, Any], bad: list[int]
) -> None:
    outcome = check(batch, {**rule, "action": "warn"})
    assert outcome.passed.num_rows == batch.num_rows and outcome.quarantined.num_rows == 0
    label = next(iter(outcome.counts))
    assert outcome.counts == {label: len(bad)}
    assert len(outcome.warnings) == 1 and f"{len(bad)} of 6 rows" in outcome.warnings[0]
    assert outcome.failures == []


@pytest.mark.parametrize(("rule", "bad"), ROW_CASES, ids=lambda v: str(v)[:30])
def test_row_rule_quarantine_diverts_exactly_the_bad_rows(
    batch: pa.Table, rule: dict[str, Any], bad: list[int]
) -> None:
    outcome = check(batch, {**rule, "action": "quarantine"}, source_ref=REFS)
    assert outcome.quarantined.column(DQ_SOURCE).to_pylist() == [REFS[i].as_py() for i in bad]
    good = [i for i in range(6) if i not in bad]
    assert outcome.passed_row_ids.to_pylist() == good
    assert outcome.passed.to_pylist() == batch.take(good).to_pylist()
    assert outcome.warnings == [] and outcome.failures == []


@pytest.mark.parametrize(("rule", "bad"), ROW_CASES, ids=lambda v: str(v)[:30])
def test_row_rule_fail_raises_with_count_and_examples(
    batch: pa.Table, rule: dict[str, Any], bad: list[int]
) -> None:
    with pytest.raises(ExpectationFailedError) as info:
        check(batch, {**rule, "action": "fail"}, source_ref=REFS)
    error = info.value
    assert f"{len(bad)} of 6 rows" in error.message
    assert error.fields["count"] == len(bad)
    assert REFS[bad[0]].as_py() in error.message  # where the first example came from
    assert error.code == "expectation_failed"


def test_fail_shows_at_most_three_examples() -> None:
    table = pa.table({"n": [-1, -2, -3, -4, -5]})
    with pytest.raises(ExpectationFailedError) as info:
        check(table, {"rule": "range", "column": "n", "min": 0})
    message = info.value.message
    assert "row 0 (n=-1), row 1 (n=-2), row 2 (n=-3)" in message and "n=-4" not in message


def test_fail_is_raised_after_every_rule_was_checked(batch: pa.Table) -> None:
    rules: list[dict[str, Any]] = [
        {"rule": "not_null", "column": "email", "action": "fail"},
        {"rule": "unique", "columns": ["id"], "action": "fail"},
    ]
    with pytest.raises(ExpectationFailedError, match=r"not_null\(email\).*1 more failing rule"):
        check(batch, *rules)
    outcome = check(batch, *rules, raise_on_fail=False)
    assert len(outcome.failures) == 2 and outcome.counts == {"not_null(email)": 1, "unique(id)": 2}


def test_quarantine_columns_and_one_row_per_bad_row(batch: pa.Table) -> None:
    outcome = check(
        batch,
        {"rule": "not_null", "column": "email", "action": "quarantine"},
        {"rule": "unique", "columns": ["id"], "action": "quarantine"},
        {"rule": "range", "column": "amount", "max": 100, "action": "quarantine", "name": "cap"},
        source_ref=REFS,
        run_id="run-42",
    )
    quarantined = outcome.quarantined
    assert quarantined.column_names == [*batch.column_names, *DQ_COLUMNS]
    rows = quarantined.to_pylist()
    assert [r["id"] for r in rows] == [2, 2, 3]
    assert rows[0][DQ_RULE] == "unique(id)"
    assert rows[1][DQ_RULE] == "not_null(email), unique(id)"
    assert rows[1][DQ_REASON] == "email is null; (id) repeats within the batch"
    assert rows[2][DQ_RULE] == "cap" and rows[2][DQ_REASON] == "amount outside [-inf, 100]"
    assert [r[DQ_SOURCE] for r in rows] == [REFS[i].as_py() for i in (1, 2, 3)]
    assert {r[DQ_RUN_ID] for r in rows} == {"run-42"}


def test_quarantine_without_source_refs_leaves_source_null(batch: pa.Table) -> None:
    outcome = check(batch, {"rule": "not_null", "column": "email", "action": "quarantine"})
    assert outcome.quarantined.column(DQ_SOURCE).to_pylist() == [None]
    assert outcome.quarantined.schema.field(DQ_SOURCE).type == pa.string()


def test_integer_source_refs_become_text(batch: pa.Table) -> None:
    refs = pa.array(range(100, 106))
    outcome = check(
        batch, {"rule": "not_null", "column": "email", "action": "quarantine"}, source_ref=refs
    )
    assert outcome.quarantined.column(DQ_SOURCE).to_pylist() == ["102"]


def test_nothing_quarantined_still_has_the_quarantine_schema(batch: pa.Table) -> None:
    outcome = check(batch, {"rule": "not_null", "column": "id", "action": "warn"})
    assert outcome.quarantined.num_rows == 0
    assert outcome.quarantined.column_names == [*batch.column_names, *DQ_COLUMNS]


# ---------------------------------------------------------------- table rules


@pytest.mark.parametrize("action", ["warn", "fail"])
def test_row_count(batch: pa.Table, action: str) -> None:
    assert check(batch, {"rule": "row_count", "min": 1, "max": 6, "action": action}).counts == {
        "row_count": 0
    }
    rule = {"rule": "row_count", "min": 10, "action": action}
    if action == "fail":
        with pytest.raises(ExpectationFailedError, match="6 rows, fewer than min 10"):
            check(batch, rule)
    else:
        outcome = check(batch, rule)
        assert outcome.warnings and "6 rows, fewer than min 10" in outcome.warnings[0]
        assert outcome.passed.num_rows == 6


@pytest.mark.parametrize("action", ["warn", "fail"])
def test_freshness(action: str) -> None:
    times = pa.array(
        [NOW - timedelta(hours=3), NOW - timedelta(hours=2)], pa.timestamp("us", "UTC")
    )
    table = pa.table({"ts": times})
    assert check(
        table, {"rule": "freshness", "column": "ts", "max_age_s": 7201, "action": action}
    ).counts == {"freshness(ts)": 0}
    stale = {"rule": "freshness", "column": "ts", "max_age_s": 3600, "action": action}
    if action == "fail":
        with pytest.raises(ExpectationFailedError, match="7200 s old"):
            check(table, stale)
    else:
        assert "7200 s old" in check(table, stale).warnings[0]


def test_freshness_of_naive_times_and_dates_reads_utc() -> None:
    naive = pa.table({"ts": pa.array([datetime(2026, 3, 1, 11, 30)], pa.timestamp("us"))})
    assert check(naive, {"rule": "freshness", "column": "ts", "max_age_s": 3600}).counts == {
        "freshness(ts)": 0
    }
    days = pa.table({"d": pa.array([date(2026, 2, 27)])})
    with pytest.raises(ExpectationFailedError, match="newest d is 2026-02-27T00:00:00"):
        check(days, {"rule": "freshness", "column": "d", "max_age_s": 86400})


def test_freshness_with_no_values_is_violated() -> None:
    table = pa.table({"ts": pa.array([None], pa.timestamp("us", "UTC"))})
    outcome = check(table, {"rule": "freshness", "column": "ts", "max_age_s": 60, "action": "warn"})
    assert "no values" in outcome.warnings[0]


def test_table_rules_cannot_quarantine() -> None:
    for rule in (
        {"rule": "row_count", "min": 1},
        {"rule": "freshness", "column": "t", "max_age_s": 1},
    ):
        with pytest.raises(ValidationError, match="cannot quarantine rows"):
            _RULES.validate_python([{**rule, "action": "quarantine"}])


# ---------------------------------------------------------------- typing of rules


def test_range_over_timestamps_with_text_and_date_bounds() -> None:
    ts = pa.array(
        [datetime(2025, 12, 31, 23), datetime(2026, 1, 15), datetime(2026, 2, 2)],
        pa.timestamp("us", "UTC"),
    )
    table = pa.table({"ts": ts})
    rule = {"rule": "range", "column": "ts", "min": "2026-01-01T00:00:00", "max": date(2026, 2, 1)}
    outcome = check(table, {**rule, "action": "quarantine"})
    assert outcome.passed_row_ids.to_pylist() == [1]


def test_range_on_text_column_with_number_bounds_says_cast_first() -> None:
    table = pa.table({"amount": ["1", "2"]})
    with pytest.raises(ExpectationConfigError, match=r"range\(amount\).*cast the column first"):
        check(table, {"rule": "range", "column": "amount", "min": 0})


def test_allowed_values_of_another_type_say_so() -> None:
    table = pa.table({"n": [1, 2]})
    with pytest.raises(ExpectationConfigError, match="do not fit column n"):
        check(table, {"rule": "allowed_values", "column": "n", "values": ["one"]})


def test_unknown_column_in_a_rule_lists_available(batch: pa.Table) -> None:
    with pytest.raises(InvalidInputError, match=r"expectation 'not_null\(emial\)'.*available"):
        check(batch, {"rule": "not_null", "column": "emial"})


def test_source_ref_must_line_up(batch: pa.Table) -> None:
    with pytest.raises(InvalidInputError, match="one per row"):
        check(batch, {"rule": "not_null", "column": "id"}, source_ref=REFS.slice(0, 2))


def test_reserved_columns_in_the_data_are_refused(batch: pa.Table) -> None:
    replay = batch.append_column("_dq_rule", pa.nulls(6, pa.string()))
    with pytest.raises(InvalidInputError, match="reserved"):
        check(replay, {"rule": "not_null", "column": "email", "action": "quarantine"})


def test_invalid_regex_is_refused_at_load() -> None:
    with pytest.raises(ValidationError, match="not an RE2 regular expression"):
        _RULES.validate_python([{"rule": "regex", "column": "e", "pattern": "("}])


# ---------------------------------------------------------------- the invariant, generated


_ROW_RULE = st.one_of(
    st.builds(lambda c: {"rule": "not_null", "column": c}, st.sampled_from(["n", "s"])),
    st.builds(
        lambda c: {"rule": "unique", "columns": c}, st.sampled_from([["n"], ["s"], ["n", "s"]])
    ),
    st.builds(
        lambda lo, span: {"rule": "range", "column": "n", "min": lo, "max": lo + span},
        st.integers(-5, 5),
        st.integers(0, 6),
    ),
    st.builds(
        lambda vs: {"rule": "allowed_values", "column": "s", "values": vs},
        st.lists(st.sampled_from(list("abc")), min_size=1, max_size=3),
    ),
    st.builds(
        lambda p: {"rule": "regex", "column": "s", "pattern": p},
        st.sampled_from(["^a", "b|c", "z"]),
    ),
    st.builds(lambda k: {"rule": "sql", "predicate": f"n > {k}"}, st.integers(-5, 5)),
)


def _oracle(rows: list[dict[str, Any]], rule: dict[str, Any]) -> set[int]:
    """Row positions that violate ``rule``, computed one row at a time in Python."""
    kind = rule["rule"]
    if kind == "not_null":
        return {i for i, r in enumerate(rows) if r[rule["column"]] is None}
    if kind == "unique":
        keys = [tuple(r[c] for c in rule["columns"]) for r in rows]
        return {i for i, k in enumerate(keys) if None not in k and keys.count(k) > 1}
    if kind == "range":
        return {
            i
            for i, r in enumerate(rows)
            if r["n"] is not None and not rule["min"] <= r["n"] <= rule["max"]
        }
    if kind == "allowed_values":
        return {
            i for i, r in enumerate(rows) if r["s"] is not None and r["s"] not in rule["values"]
        }
    if kind == "regex":
        return {
            i
            for i, r in enumerate(rows)
            if r["s"] is not None and not re.search(rule["pattern"], r["s"])
        }
    k = int(rule["predicate"].split()[-1])
    return {i for i, r in enumerate(rows) if r["n"] is None or not r["n"] > k}


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    rows=st.lists(
        st.fixed_dictionaries(
            {
                "n": st.one_of(st.none(), st.integers(-8, 8)),
                "s": st.one_of(st.none(), st.sampled_from(list("abcd"))),
            }
        ),
        max_size=30,
    ),
    rules=st.lists(st.tuples(_ROW_RULE, st.sampled_from(["warn", "quarantine"])), max_size=5),
)
def test_passed_plus_quarantined_is_every_row(
    rows: list[dict[str, Any]], rules: list[tuple[dict[str, Any], str]]
) -> None:
    table = pa.Table.from_pylist(rows, schema=pa.schema([("n", pa.int64()), ("s", pa.string())]))
    specs = [{**rule, "action": action, "name": f"r{i}"} for i, (rule, action) in enumerate(rules)]
    refs = pa.array([f"m{i}" for i in range(len(rows))])
    outcome = check(table, *specs, source_ref=refs)
    expected: dict[int, list[str]] = {}
    for spec in specs:
        bad = _oracle(rows, spec)
        assert outcome.counts[spec["name"]] == len(bad)
        if spec["action"] == "quarantine":
            for i in bad:
                expected.setdefault(i, []).append(spec["name"])
    quarantined = outcome.quarantined.to_pylist()
    assert {int(r[DQ_SOURCE][1:]) for r in quarantined} == set(expected)
    assert len(quarantined) == len(expected)  # each bad row once
    for r in quarantined:
        assert r[DQ_RULE] == ", ".join(expected[int(r[DQ_SOURCE][1:])])
    assert outcome.passed_row_ids.to_pylist() == [i for i in range(len(rows)) if i not in expected]


# ---------------------------------------------------------------- schema drift


INCOMING = pa.schema([("id", pa.int64()), ("email", pa.string()), ("coupon", pa.string())])
TABLE = pa.schema([("id", pa.int64()), ("email", pa.string())])


def test_no_table_or_no_new_columns_is_no_drift() -> None:
    assert check_drift(INCOMING, None, "fail").action == "none"
    decision = check_drift(TABLE, INCOMING, "fail")  # fewer columns than the table is fine
    assert decision.action == "none" and not decision.drifted


def test_add_columns_evolves() -> None:
    decision = check_drift(INCOMING, TABLE, "add_columns", table="sales.orders")
    assert decision.action == "evolve" and decision.new_columns == ("coupon",)


def test_fail_names_the_columns_and_the_fix() -> None:
    with pytest.raises(SchemaDriftError) as info:
        check_drift(INCOMING, TABLE, "fail", table="sales.orders")
    message = info.value.message
    assert "coupon" in message and "sales.orders" in message
    assert "schema_evolution: add_columns" in message
    assert info.value.fields["columns"] == ["coupon"]


def test_quarantine_sends_every_row_with_the_columns_named() -> None:
    decision = check_drift(INCOMING, TABLE, "quarantine", table="sales.orders")
    assert decision.action == "quarantine"
    data = pa.table({"id": [1, 2], "email": ["a", "b"], "coupon": ["X", None]}, schema=INCOMING)
    quarantined = quarantine_drift(
        data, decision, run_id="run-7", source_ref=pa.array(["f:2", "f:3"])
    )
    rows = quarantined.to_pylist()
    assert len(rows) == 2 and {r[DQ_RULE] for r in rows} == {"schema_drift"}
    assert all("coupon" in r[DQ_REASON] for r in rows)
    assert [r[DQ_SOURCE] for r in rows] == ["f:2", "f:3"] and rows[0][DQ_RUN_ID] == "run-7"
