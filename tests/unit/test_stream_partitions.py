"""Property: key-hash partitions sharing one watermark give exactly one engine's output."""

from __future__ import annotations

import itertools
from typing import Any

import pyarrow as pa
from hypothesis import given, settings
from hypothesis import strategies as st

from actors.stream.operators import PartitionCore, concat_outputs, split
from actors.stream.runner import newest_ticks
from actors.stream.topology import load_topology

SCHEMA = pa.schema([("k", pa.string()), ("v", pa.float64()), ("ts", pa.float64())])


def topology(partitions: int, window: dict[str, Any]) -> Any:
    return load_topology(
        {
            "name": "prop",
            "source": {"kind": "queue"},
            "schema": {"k": "string", "v": "double", "ts": "double"},
            "time_column": "ts",
            "key_by": ["k"],
            "partitions": partitions,
            "operators": [
                {
                    "kind": "window",
                    "name": "w",
                    "window": window,
                    "aggregations": [
                        {"fn": "count", "as": "n"},
                        {"column": "v", "fn": "sum", "as": "s"},
                        {"column": "v", "fn": "distinct", "as": "d"},
                    ],
                    "max_delay_s": 2,
                    "allowed_lateness_s": 3,
                },
                {
                    "kind": "pattern",
                    "name": "p",
                    "steps": [
                        {"column": "v", "op": "<", "value": 2},
                        {"column": "v", "op": ">=", "value": 3},
                    ],
                    "within_s": 4,
                    "max_delay_s": 2,
                },
            ],
        }
    )


def run(partitions: int, window: dict[str, Any], batches: list[pa.Table]) -> dict[str, list]:
    spec = topology(partitions, window)
    cores = [PartitionCore(spec) for _ in range(partitions)]
    outputs = []
    for batch in batches:
        newest = newest_ticks(batch, "ts")
        for core, part in zip(cores, split(batch, ["k"], partitions), strict=True):
            outputs.append(core.process(part, newest))
    outputs += [core.flush(SCHEMA) for core in cores]
    merged = concat_outputs(outputs)
    return {
        name: sorted(tuple(str(v) for v in row.values()) for row in table.to_pylist())
        for name, table in merged.items()
    }


events = st.lists(
    st.tuples(st.sampled_from("abcdef"), st.integers(0, 4), st.integers(0, 60)),
    min_size=1,
    max_size=80,
)
windows = st.sampled_from(
    [
        {"kind": "tumbling", "size_s": 5},
        {"kind": "sliding", "size_s": 6, "slide_s": 2},
        {"kind": "session", "gap_s": 3},
    ]
)


@settings(max_examples=60, deadline=None)
@given(events=events, window=windows, cuts=st.lists(st.integers(1, 80), max_size=6))
def test_partitions_equal_one_engine(
    events: list[tuple[str, int, int]], window: dict[str, Any], cuts: list[int]
) -> None:
    table = pa.Table.from_pylist(
        [{"k": k, "v": float(v), "ts": float(t)} for k, v, t in events], schema=SCHEMA
    )
    bounds = sorted({0, table.num_rows, *(c for c in cuts if c < table.num_rows)})
    batches = [table.slice(a, b - a) for a, b in itertools.pairwise(bounds)]
    one = run(1, window, batches)
    for partitions in (2, 3):
        assert run(partitions, window, batches) == one
