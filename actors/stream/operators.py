"""One key partition of a topology: its stateful operators over Arrow batches.

``PartitionCore`` is pure (no Ray, no I/O): the same object runs inside a partition
actor and inside the single-process ``LocalPartitions`` the tests compare against.
``split`` routes a batch's rows to partitions by a stable hash of the key columns
(vectorised with pandas' ``hash_array``; stable across processes and restarts, unlike
Python's ``hash``).
"""

from __future__ import annotations

import itertools
import json
from collections.abc import Sequence

import numpy as np
import pandas as pd
import pyarrow as pa

from actors.stream.anomaly import AnomalyDetector
from actors.stream.engine import WindowedAggregator
from actors.stream.patterns import SequenceDetector
from actors.stream.topology import AnomalyOp, PatternOp, Topology, WindowOp
from actors.stream.watermark import NO_WATERMARK
from actors.stream.windows import TICKS_PER_S

Outputs = dict[str, pa.Table]
_Engine = WindowedAggregator | SequenceDetector | AnomalyDetector
WINDOW_TS = pa.timestamp("us", "UTC")


def late_schema(events: pa.Schema) -> pa.Schema:
    """Late rows: the event's columns, the operator, why, and the window it missed."""
    extra = [
        pa.field("operator", pa.string()),
        pa.field("reason", pa.string()),
        pa.field("window_start", WINDOW_TS),
        pa.field("window_end", WINDOW_TS),
    ]
    return pa.schema([*events, *extra])


class PartitionCore:
    """The operators of one topology for the keys of one partition."""

    def __init__(self, topology: Topology) -> None:
        self.topology = topology
        self._engines: dict[str, _Engine] = {
            op.name: _build(topology, op) for op in topology.operators
        }

    def process(self, events: pa.Table, seen_max: int) -> Outputs:
        """Run every operator over ``events`` (this partition's rows of one batch).

        ``seen_max``: newest event time (ticks) of the whole batch across partitions,
        so all partitions share one watermark (``NO_WATERMARK`` when it had none).
        """
        out: Outputs = {}
        late: list[pa.Table] = []
        hint_s = None if seen_max == NO_WATERMARK else seen_max / TICKS_PER_S
        for name, engine in self._engines.items():
            if isinstance(engine, WindowedAggregator):
                result = engine.process(events, seen_max=seen_max)
                out[name] = result.results
                late.append(_late_rows(events.schema, name, result.late))
            elif isinstance(engine, SequenceDetector):
                matches = engine.process(events, seen_max_s=hint_s)
                out[name] = matches.matches
                late.append(_late_rows(events.schema, name, matches.late))
            else:
                scored = engine.process(events)
                out[name] = scored.anomalies
                late.append(_late_rows(events.schema, name, scored.late))
        if late:
            out["late"] = pa.concat_tables(late)
        return out

    def flush(self, events_schema: pa.Schema) -> Outputs:
        """End of a bounded stream: emit every window still open."""
        out: Outputs = {}
        late: list[pa.Table] = []
        for name, engine in self._engines.items():
            if isinstance(engine, WindowedAggregator):
                result = engine.flush()
                out[name] = result.results
                late.append(_late_rows(events_schema, name, result.late))
        if late:
            out["late"] = pa.concat_tables(late)
        return out

    def snapshot(self) -> bytes:
        """Every operator's state, one Arrow IPC payload per operator."""
        states = {name: engine.snapshot() for name, engine in self._engines.items()}
        table = pa.table(
            {"name": list(states), "state": pa.array(list(states.values()), pa.binary())}
        )
        sink = pa.BufferOutputStream()
        with pa.ipc.new_stream(sink, table.schema) as writer:
            writer.write_table(table)
        return bytes(sink.getvalue().to_pybytes())

    def restore(self, data: bytes) -> None:
        """Replace every operator's state by a ``snapshot()``; empty bytes mean fresh state."""
        self._engines = {op.name: _build(self.topology, op) for op in self.topology.operators}
        if not data:
            return
        table = pa.ipc.open_stream(pa.py_buffer(data)).read_all()
        for name, state in zip(table["name"].to_pylist(), table["state"].to_pylist(), strict=True):
            if name in self._engines and state:
                self._engines[name].restore(state)


def _build(topology: Topology, op: WindowOp | PatternOp | AnomalyOp) -> _Engine:
    if isinstance(op, WindowOp):
        return WindowedAggregator(topology.window_config(op))
    if isinstance(op, PatternOp):
        return SequenceDetector(
            steps=op.steps,
            within_s=op.within_s,
            key_columns=topology.key_by,
            time_column=topology.time_column,
            absent=op.absent,
            max_delay_s=op.max_delay_s,
        )
    return AnomalyDetector(
        column=op.column,
        key_columns=topology.key_by,
        time_column=topology.time_column,
        window_s=op.window_s,
        method=op.method,
    )


def _late_rows(events: pa.Schema, operator: str, late: pa.Table) -> pa.Table:
    """An operator's late output in the one late-table schema."""
    schema = late_schema(events)
    n = late.num_rows
    columns: dict[str, pa.Array | pa.ChunkedArray] = {}
    for f in events:
        columns[f.name] = late[f.name] if f.name in late.column_names else pa.nulls(n, f.type)
    columns["operator"] = pa.array([operator] * n, pa.string())
    columns["reason"] = (
        late["reason"] if "reason" in late.column_names else pa.array(["too_late"] * n, pa.string())
    )
    for bound in ("window_start", "window_end"):
        col = late[bound] if bound in late.column_names else pa.nulls(n, WINDOW_TS)
        columns[bound] = col.cast(WINDOW_TS)
    return pa.table(columns, schema=schema)


def partition_ids(table: pa.Table, keys: Sequence[str], partitions: int) -> np.ndarray:
    """Partition of each row: a stable hash of its key columns, modulo ``partitions``."""
    if partitions == 1 or table.num_rows == 0:
        return np.zeros(table.num_rows, dtype=np.int64)
    combined = np.zeros(table.num_rows, dtype=np.uint64)
    for name in keys:
        column = table[name].combine_chunks()
        encoded = column.dictionary_encode()
        uniques = encoded.dictionary.to_numpy(zero_copy_only=False)
        hashed = pd.util.hash_array(np.asarray(uniques, dtype=object))
        indices = encoded.indices.fill_null(-1).to_numpy(zero_copy_only=False)
        per_row = np.where(indices >= 0, hashed[np.maximum(indices, 0)], np.uint64(0))
        combined = combined * np.uint64(1_000_003) ^ per_row.astype(np.uint64)
    return (combined % np.uint64(partitions)).astype(np.int64)


def split(table: pa.Table, keys: Sequence[str], partitions: int) -> list[pa.Table]:
    """``table``'s rows per partition, in their original order (empty tables included)."""
    if partitions == 1:
        return [table]
    ids = partition_ids(table, keys, partitions)
    order = np.argsort(ids, kind="stable")
    bounds = np.searchsorted(ids[order], np.arange(partitions + 1))
    taken = table.take(pa.array(order, pa.int64()))
    return [taken.slice(int(a), int(b - a)) for a, b in itertools.pairwise(bounds)]


def concat_outputs(parts: Sequence[Outputs]) -> Outputs:
    """Merge outputs of several partitions/batches per output name (schemas unified)."""
    grouped: dict[str, list[pa.Table]] = {}
    for part in parts:
        for name, table in part.items():
            if table.num_columns:
                grouped.setdefault(name, []).append(table)
    return {
        name: pa.concat_tables(tables, promote_options="permissive")
        for name, tables in grouped.items()
    }


def describe_outputs(outputs: Outputs) -> str:
    """Row counts per output, for logs."""
    return json.dumps({name: table.num_rows for name, table in outputs.items()})


def prepare_events(table: pa.Table, topology: Topology) -> pa.Table:
    """Derive new columns, then keep the rows ``where`` holds (both vectorised)."""
    if topology.derive and table.num_rows:
        import pyarrow.compute as pc
        import pyarrow.dataset as ds

        derived = {name: expr.compile() for name, expr in topology.derive.items()}
        kept = {c: pc.field(c) for c in table.column_names if c not in derived}
        table = ds.dataset(table).to_table(columns={**kept, **derived})
    elif topology.derive:
        table = _empty_with_derived(table, topology)
    if topology.where is not None and table.num_rows:
        from actors.stream.pattern_spec import evaluate

        table = table.filter(pa.array(evaluate(topology.where, table)))
    return table


def _empty_with_derived(table: pa.Table, topology: Topology) -> pa.Table:
    """An empty batch still carries the derived columns (types from a one-row probe)."""
    probe = pa.Table.from_pylist([{}], schema=table.schema) if table.num_columns else table
    probed = prepare_events(probe, topology.model_copy(update={"where": None}))
    return probed.slice(0, 0)
