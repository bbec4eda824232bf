"""Topology specs: what validates, what fails and how the failure reads."""

from __future__ import annotations

import datetime as dt
from pathlib import Path
from typing import Any

import pyarrow as pa
import pytest

from actors.stream.expr import Expr
from actors.stream.operators import PartitionCore, partition_ids, prepare_events, split
from actors.stream.topology import InvalidTopologyError, load_topology
from tests.stream_support import window_topology

EXAMPLE = Path(__file__).resolve().parents[2] / "configs" / "streams" / "orders_live.yaml"


def spec(**overrides: Any) -> dict[str, Any]:
    base: dict[str, Any] = {
        "name": "t",
        "source": {"kind": "queue"},
        "schema": {"k": "string", "v": "double", "ts": "timestamptz"},
        "time_column": "ts",
        "key_by": ["k"],
    }
    base.update(overrides)
    return base


def test_the_shipped_example_runs_through_the_core() -> None:
    topology = load_topology(EXAMPLE)
    schema = topology.arrow_schema()
    assert schema is not None
    start = dt.datetime(2026, 1, 1, tzinfo=dt.UTC)
    rows = [
        {
            "order_id": i,
            "customer": f"c{i % 3}",
            "status": "cancelled" if i % 7 == 0 else "new",
            "amount": float(i * 100),
            "ts": start + dt.timedelta(seconds=30 * i),
        }
        for i in range(40)
    ]
    events = prepare_events(pa.Table.from_pylist(rows, schema=schema), topology)
    assert events["amount_eur"].to_pylist()[1] == pytest.approx(92.0)
    core = PartitionCore(topology)
    first = core.process(events, 0)
    flushed = core.flush(events.schema)
    assert first["per_minute"].num_rows and first["cancel_after_big_order"].num_rows
    assert sum(flushed["sessions"]["orders"].to_pylist()) == 40


@pytest.mark.parametrize(
    ("overrides", "expected"),
    [
        ({"sinks": [{"kind": "lake", "from": "nope", "table": "a.b"}]}, "names no output"),
        ({"partitions": 2, "key_by": []}, "needs key_by"),
        ({"schema": {}}, "needs `schema`"),
        ({"time_column": "when"}, "unknown columns ['when']"),
        ({"where": {"column": "x", "op": "=", "value": 1}}, "where reads unknown columns"),
        ({"derive": {"w": {"call": "multiply", "args": [{"field": "q"}, 2]}}}, "derive.w"),
        ({"derive": {"w": {"call": "no_such_fn", "args": []}}}, "unknown Arrow compute"),
        ({"derive": {"w": {"call": "sum", "args": [{"field": "v"}]}}}, "scalar functions only"),
        (
            {
                "operators": [
                    {
                        "kind": "window",
                        "name": "events",
                        "window": {"kind": "tumbling", "size_s": 1},
                        "aggregations": [{"fn": "count", "as": "n"}],
                    }
                ]
            },
            "operator names must be unique",
        ),
        ({"key_by": [], "sinks": [{"kind": "latest", "from": "events"}]}, "set key_by"),
        ({"name": "Bad-Name"}, "name"),
    ],
)
def test_invalid_topologies_name_the_problem(overrides: dict[str, Any], expected: str) -> None:
    with pytest.raises(InvalidTopologyError) as caught:
        load_topology(spec(**overrides))
    assert expected in caught.value.message
    assert "fix the topology" in caught.value.message


def test_files_that_are_missing_or_not_mappings_are_refused(tmp_path: Path) -> None:
    with pytest.raises(InvalidTopologyError, match="does not exist"):
        load_topology(tmp_path / "missing.yaml")
    listed = tmp_path / "list.yaml"
    listed.write_text("- a\n- b\n")
    with pytest.raises(InvalidTopologyError, match="expected a mapping"):
        load_topology(listed)


def test_conditions_may_leave_kind_out() -> None:
    where = {
        "any": [{"column": "v", "op": ">", "value": 1}, {"column": "k", "op": "=", "value": "a"}]
    }
    topology = load_topology(spec(where=where))
    table = pa.table(
        {
            "k": ["a", "b", "b"],
            "v": [0.0, 2.0, 0.5],
            "ts": pa.array([1, 2, 3], pa.timestamp("us", "UTC")),
        }
    )
    assert prepare_events(table, topology)["v"].to_pylist() == [0.0, 2.0]


def test_derive_options_and_literals_compile() -> None:
    expr = Expr.model_validate(
        {"call": "round", "args": [{"field": "v"}], "options": {"ndigits": 1}}
    )
    table = pa.table({"v": [1.26, 2.04]})
    import pyarrow.dataset as ds

    out = ds.dataset(table).to_table(
        columns={"r": expr.compile(), "one": Expr(literal=1).compile()}
    )
    assert out["r"].to_pylist() == [1.3, 2.0] and out["one"].to_pylist() == [1, 1]
    with pytest.raises(ValueError, match="exactly one of"):
        Expr.model_validate({"field": "v", "literal": 1})


def test_partitioning_is_stable_and_keeps_each_key_in_one_partition() -> None:
    table = pa.table({"k": [f"k{i % 50}" for i in range(1000)], "n": list(range(1000))})
    ids = partition_ids(table, ["k"], 4)
    assert (ids == partition_ids(table, ["k"], 4)).all()
    parts = split(table, ["k"], 4)
    assert sum(p.num_rows for p in parts) == 1000
    seen: dict[str, int] = {}
    for index, part in enumerate(parts):
        for key in part["k"].to_pylist():
            assert seen.setdefault(key, index) == index
        assert part["n"].to_pylist() == sorted(part["n"].to_pylist())  # arrival order kept
    assert len({i for i, p in enumerate(parts) if p.num_rows}) > 1


def test_topologies_round_trip_through_json_as_actors_receive_them() -> None:
    for topology in (window_topology(partitions=2), load_topology(EXAMPLE)):
        again = load_topology(topology.model_dump(mode="json", by_alias=True))
        assert again == topology
