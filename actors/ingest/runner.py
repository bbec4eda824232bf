"""One run of a pipeline: plan, read, transform, check, commit ONE snapshot, record.

The exactly-once protocol (see ``actors/ingest/state.py``):

0. reconcile: runs whose snapshot is in the sink (run id in the summary) but whose
   bookkeeping was lost are marked consumed, so their inputs are not read twice;
1. plan what is new; 2. record the run with its plan; 3. read and process the plan
   (its splits in parallel when a ``map_splits`` is given) and commit the passed rows as
   one snapshot carrying the run id (quarantined rows first, to ``<table>__quarantine``);
4. mark the plan consumed; 5. finish the run record; 6. ack the source.

A failure before the commit leaves the sink as it was and nacks the source; the run
record says why. Invariant of every run: read = written + quarantined + filtered.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from functools import cache
from typing import Any

import pyarrow as pa

from actors.ingest.drift import check_drift, quarantine_drift
from actors.ingest.expectations import evaluate
from actors.ingest.run_records import RUN_ID_SUMMARY_KEY, RunCounts, committed_run_ids
from actors.ingest.sources.base import Source, SourceBatch, SourcePlan
from actors.ingest.spec import PipelineSpec, config_hash
from actors.ingest.state import IngestState
from actors.ingest.transforms import apply_transforms, resolve_salts
from actors.lake.core import LakeCore
from actors.lake.errors import TableNotFoundError

logger = logging.getLogger(__name__)
Progress = Callable[[int], None]


@dataclass
class SplitResult:
    """What processing one split produced: rows to write, rows to quarantine, counts."""

    passed: list[pa.Table] = field(default_factory=list)
    quarantined: list[pa.Table] = field(default_factory=list)
    read: int = 0
    filtered: int = 0
    warnings: list[str] = field(default_factory=list)

    def merge(self, other: SplitResult) -> None:
        self.passed += other.passed
        self.quarantined += other.quarantined
        self.read += other.read
        self.filtered += other.filtered
        self.warnings += other.warnings


# (splits, run id, now) -> one result per split; the Ray shell runs them as tasks.
MapSplits = Callable[[Sequence[SourcePlan], str, datetime], Iterable[SplitResult]]


@dataclass(frozen=True)
class RunOutcome:
    run_id: str
    status: str
    counts: RunCounts
    snapshot_id: int | None
    duration_s: float
    warnings: tuple[str, ...] = ()
    message: str = ""


def _concat(tables: list[pa.Table]) -> pa.Table | None:
    tables = [t for t in tables if t.num_rows]
    if not tables:
        return None
    return pa.concat_tables(tables, promote_options="permissive")


def sink_schema(lake: LakeCore, table: str) -> pa.Schema | None:
    try:
        return lake.scan(table, limit=0).schema
    except TableNotFoundError:
        return None


def process_batches(
    spec: PipelineSpec,
    batches: Iterator[SourceBatch],
    *,
    run_id: str,
    now: datetime,
    sink_schema: pa.Schema | None,
    lookup: Callable[[str], pa.Table] | None,
    salts: dict[str, str],
    progress: Progress | None = None,
) -> SplitResult:
    """Transforms, drift and expectations over each batch; pure (no commit, no Ray)."""
    out = SplitResult()
    for batch in batches:
        out.read += batch.table.num_rows + len(batch.errors)
        out.quarantined += [_undecodable(batch.errors, run_id)] if batch.errors else []
        result = apply_transforms(batch.table, spec.transforms, lookup=lookup, salts=salts)
        out.filtered += result.rows_filtered
        # nothing dropped means row_ids is every row in order: no need to take
        refs = batch.refs.take(result.row_ids) if result.rows_filtered else batch.refs
        decision = check_drift(
            result.table.schema, sink_schema, spec.drift_policy, table=str(spec.sink.table)
        )
        if decision.action == "quarantine":
            out.quarantined.append(
                quarantine_drift(result.table, decision, run_id=run_id, source_ref=refs)
            )
        else:
            checked = evaluate(
                result.table, spec.expectations, now=now, run_id=run_id, source_ref=refs
            )
            out.passed.append(checked.passed)
            out.quarantined.append(checked.quarantined)
            out.warnings += checked.warnings
        if progress is not None:
            progress(batch.table.num_rows + len(batch.errors))
    return out


def _undecodable(errors: Sequence[Any], run_id: str) -> pa.Table:
    return pa.table(
        {
            "_raw": [
                bytes(getattr(e, "body", b"") or b"").decode("utf-8", "replace") for e in errors
            ],
            "_dq_rule": ["decode"] * len(errors),
            "_dq_reason": [getattr(e, "message", str(e)) for e in errors],
            "_dq_source": [str(getattr(e, "message_id", "")) for e in errors],
            "_dq_run_id": [run_id] * len(errors),
        }
    )


class PipelineRunner:
    """Runs ``spec`` against one Lake core and one ingest state, in this process."""

    def __init__(
        self,
        spec: PipelineSpec,
        *,
        lake: LakeCore,
        state: IngestState,
        source: Source,
        now: Callable[[], datetime] = lambda: datetime.now(UTC),
        map_splits: MapSplits | None = None,
        parallelism: int = 1,
        progress: Progress | None = None,
        salts: dict[str, str] | None = None,
    ) -> None:
        self.spec = spec
        self.lake = lake
        self.state = state
        self.source = source
        self._now = now
        self._map_splits = map_splits
        self._parallelism = parallelism
        self._progress = progress
        self._salts = salts if salts is not None else resolve_salts(spec.transforms, {})

    @property
    def sink(self) -> str:
        return str(self.spec.sink.table)

    async def run(self) -> RunOutcome:
        started = time.monotonic()
        await self._reconcile()
        plan = self.source.plan(await self.state.consumed(self.spec.name))
        record = await self.state.start_run(self.spec.name, config_hash(self.spec), [plan])
        run_id = record.run_id
        try:
            processed = self._process(plan, run_id)
            snapshot = self._commit(processed, run_id)
        except BaseException as exc:
            try:
                self.source.nack(plan)
            except Exception:  # the run's own error is the one to report
                logger.exception("could not nack the source after a failed run")
            await self.state.finish_run(
                run_id,
                "failed",
                RunCounts(),
                time.monotonic() - started,
                lineage=plan.lineage(),
                error=getattr(exc, "message", None) or repr(exc),
            )
            raise
        await self.state.mark_consumed(self.spec.name, run_id, plan)
        counts = self._counts(processed)
        await self.state.finish_run(
            run_id,
            "succeeded",
            counts,
            time.monotonic() - started,
            snapshot_id=snapshot,
            lineage={**plan.lineage(), "sink": self.sink, "snapshot_id": snapshot},
        )
        self.source.ack(plan)
        return RunOutcome(
            run_id,
            "succeeded",
            counts,
            snapshot,
            time.monotonic() - started,
            tuple(processed.warnings),
        )

    async def _reconcile(self) -> None:
        try:
            history = self.lake.history(self.sink)
        except TableNotFoundError:
            history = []
        await self.state.reconcile(
            self.spec.name, committed_run_ids(history), abandon_uncommitted=True
        )

    def _process(self, plan: SourcePlan, run_id: str) -> SplitResult:
        if plan.empty:
            return SplitResult()
        if self._map_splits is not None and self._parallelism > 1:
            merged = SplitResult()
            splits = self.source.splits(plan, self._parallelism)
            for part in self._map_splits(splits, run_id, self._now()):
                merged.merge(part)
            return merged
        return process_batches(
            self.spec,
            self.source.read(plan),
            run_id=run_id,
            now=self._now(),
            sink_schema=sink_schema(self.lake, self.sink),
            lookup=self._lookup(),
            salts=self._salts,
            progress=self._progress,
        )

    def _lookup(self) -> Callable[[str], pa.Table]:
        @cache
        def read(table: str) -> pa.Table:
            return self.lake.scan(table)

        return read

    def _commit(self, processed: SplitResult, run_id: str) -> int | None:
        """Quarantine first, then ONE sink snapshot tagged with the run id."""
        properties = {RUN_ID_SUMMARY_KEY: run_id}
        quarantined = _concat(processed.quarantined)
        if quarantined is not None:
            self._write(self.spec.quarantine_table, quarantined, properties, evolve=True)
        passed = _concat(processed.passed)
        if passed is None:
            return self._current_snapshot()
        evolve = self.spec.drift_policy == "add_columns"
        return self._write(self.sink, passed, properties, evolve=evolve)

    def _write(
        self, table: str, rows: pa.Table, props: dict[str, str], *, evolve: bool
    ) -> int | None:
        sink = self.spec.sink
        try:
            self.lake.describe(table)
        except TableNotFoundError:
            if not sink.create_if_missing and table == self.sink:
                raise
            self.lake.tables.create_namespace(table.split(".")[0], exist_ok=True)
            partition = sink.partition_by if table == self.sink else None
            self.lake.create_table(table, schema=rows.schema, partition_by=partition)
        if sink.mode == "upsert" and table == self.sink:
            result = self.lake.upsert(
                table, rows, sink.key_columns, evolve=evolve, snapshot_properties=props
            )
        else:
            result = self.lake.append(table, rows, evolve=evolve, snapshot_properties=props)
        return result.snapshot_id

    def _current_snapshot(self) -> int | None:
        try:
            return self.lake.describe(self.sink).current_snapshot_id
        except TableNotFoundError:
            return None

    @staticmethod
    def _counts(processed: SplitResult) -> RunCounts:
        passed = sum(t.num_rows for t in processed.passed)
        quarantined = sum(t.num_rows for t in processed.quarantined)
        return RunCounts(
            read=processed.read,
            written=passed,
            quarantined=quarantined,
            filtered=processed.filtered,
        )
