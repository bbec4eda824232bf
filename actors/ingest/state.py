"""What each pipeline consumed, and a record of every run, on the platform database.

Exactly-once protocol (the runner follows it; ``SqlIngestState`` keeps its side):

0. ``reconcile(pipeline, committed_run_ids)`` with the run ids found in the target
   table's snapshot summaries (``committed_run_ids(history)``): a run that committed
   but crashed before step 4 is marked consumed from the plan it stored in step 2;
1. ``view = consumed(pipeline)``; ``plan = source.plan(view)``;
2. ``start_run(pipeline, config_hash, [plan])`` stores the run and its plan;
3. read, then commit ONE Iceberg snapshot whose summary carries
   ``RUN_ID_SUMMARY_KEY: run_id`` (all or nothing);
4. ``mark_consumed(pipeline, run_id, plan)`` records the inputs and the new position
   in one transaction; ``finish_run(...)``; then ``source.ack(plan)``.

A crash before 3 leaves nothing consumed: inputs are read again, unacked messages are
redelivered. A crash between 3 and 4 is repaired by step 0 of the next run. A crash
after 4 but before the ack redelivers messages whose ids are recorded: the next plan
puts them in ``redelivered`` (acked, not read). One pipeline must run one run at a time.

Retention: message ids are kept per (pipeline, source) for ``message_retention`` and at
most about ``max_message_ids`` (a batch recorded together is pruned together); a message
redelivered after its id was pruned would be read again. File versions, pinned snapshots
and positions are kept until the pipeline's state is deleted.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping, Sequence
from datetime import datetime, timedelta
from typing import Any, Protocol

from sqlalchemy import delete, func, select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from actors.ingest.run_records import (
    RUN_ID_SUMMARY_KEY,
    FinalStatus,
    ReconcileResult,
    RunCounts,
    RunRecord,
    RunStatus,
    as_counts,
    check_name,
    committed_run_ids,
    input_key,
    new_run_id,
    run_record,
)
from actors.ingest.sources.base import RECORDED_KINDS, SourcePlan, StateView
from cluster.db.models import IngestInput, IngestRun
from cluster.db.store import PlatformStore, upsert_insert
from cluster.errors import InvalidInputError, NotFoundError

__all__ = [
    "RUN_ID_SUMMARY_KEY",
    "FinalStatus",
    "IngestState",
    "ReconcileResult",
    "RunCounts",
    "RunRecord",
    "RunStatus",
    "SqlIngestState",
    "committed_run_ids",
    "input_key",
    "new_run_id",
]

_PENDING = ("running", "failed", "succeeded")
_POSITION = "position"
_CHUNK = 500
_MAX_ERROR = 4000


class IngestState(Protocol):
    """The port: consumed inputs per pipeline, and run records."""

    async def consumed(self, pipeline: str, source: str | None = None) -> StateView: ...

    async def start_run(
        self,
        pipeline: str,
        config_hash: str,
        plans: Sequence[SourcePlan] = (),
        *,
        run_id: str | None = None,
    ) -> RunRecord: ...

    async def mark_consumed(
        self, pipeline: str, run_id: str, plan: SourcePlan | Sequence[SourcePlan]
    ) -> None: ...

    async def reconcile(
        self, pipeline: str, committed_run_ids: Iterable[str], *, abandon_uncommitted: bool = False
    ) -> ReconcileResult: ...

    async def pending_run_ids(self, pipeline: str) -> list[str]: ...

    async def finish_run(
        self,
        run_id: str,
        status: FinalStatus,
        counts: RunCounts | Mapping[str, int],
        duration_s: float,
        snapshot_id: int | None = None,
        lineage: Any = None,
        error: str | None = None,
    ) -> RunRecord: ...

    async def list_runs(self, pipeline: str | None = None, limit: int = 50) -> list[RunRecord]: ...

    async def get_run(self, run_id: str) -> RunRecord: ...


# ---------------------------------------------------------------- the SQL implementation


class SqlIngestState(PlatformStore):
    """``IngestState`` on the platform database (SQLite or PostgreSQL, migration 0002).

    ``now`` returns the current aware UTC time; it is the only clock this class reads.
    """

    table_name = IngestRun.__tablename__

    def __init__(
        self,
        session_factory: async_sessionmaker[AsyncSession],
        now: Callable[[], datetime],
        *,
        message_retention: timedelta = timedelta(days=7),
        max_message_ids: int = 100_000,
    ) -> None:
        if message_retention <= timedelta(0) or max_message_ids < 1:
            raise InvalidInputError(
                field="message_retention/max_message_ids",
                value=(str(message_retention), max_message_ids),
                allowed="a positive duration and 1 or more ids",
            )
        super().__init__(session_factory, now)
        self.message_retention = message_retention
        self.max_message_ids = max_message_ids

    # --- consumed inputs -------------------------------------------------------------

    async def consumed(self, pipeline: str, source: str | None = None) -> StateView:
        """Recorded inputs and positions of ``pipeline`` (of one ``source`` if given)."""
        query = select(
            IngestInput.source,
            IngestInput.kind,
            IngestInput.input_id,
            IngestInput.fingerprint,
            IngestInput.position,
        ).where(IngestInput.pipeline == pipeline)
        if source is not None:
            query = query.where(IngestInput.source == source)
        async with self._session() as session:
            rows = (await session.execute(query)).all()
        consumed = set()
        positions: dict[str, str] = {}
        for src, kind, input_id, fingerprint, position in rows:
            if kind == _POSITION:
                if position is not None:
                    positions[src] = position
            else:
                consumed.add((src, kind, input_id, fingerprint))
        return StateView(pipeline, frozenset(consumed), positions)

    async def mark_consumed(
        self, pipeline: str, run_id: str, plan: SourcePlan | Sequence[SourcePlan]
    ) -> None:
        """Record the plan's inputs and new positions, and the run as consumed: atomically.

        Call after the run's snapshot is committed. Idempotent: marking again changes
        nothing. ``plan`` may be the plans of several sources (or the splits of one).
        """
        plans = [plan] if isinstance(plan, SourcePlan) else list(plan)
        now = self._now()
        async with self._session() as session, session.begin():
            await self._record(session, pipeline, run_id, plans, now)
            run = await session.get(IngestRun, run_id)
            if run is not None and run.consumed_at is None:
                run.consumed_at = now

    async def _record(
        self,
        session: AsyncSession,
        pipeline: str,
        run_id: str,
        plans: Sequence[SourcePlan],
        now: datetime,
    ) -> None:
        inputs: dict[str, dict[str, Any]] = {}
        positions: dict[str, dict[str, Any]] = {}
        for plan in plans:
            for ref in plan.refs:
                if ref.kind not in RECORDED_KINDS:
                    continue
                key = input_key(pipeline, plan.source, ref.kind, ref.id, ref.fingerprint)
                inputs[key] = {
                    "key": key,
                    "pipeline": pipeline,
                    "source": plan.source,
                    "kind": ref.kind,
                    "input_id": ref.id,
                    "fingerprint": ref.fingerprint,
                    "size": ref.size,
                    "run_id": run_id,
                    "recorded_at": now,
                }
            if plan.position is not None:
                key = input_key(pipeline, plan.source, _POSITION, "", "")
                positions[key] = {
                    "key": key,
                    "pipeline": pipeline,
                    "source": plan.source,
                    "kind": _POSITION,
                    "input_id": "",
                    "fingerprint": "",
                    "position": plan.position,
                    "run_id": run_id,
                    "recorded_at": now,
                }
        insert = upsert_insert(session)
        rows = list(inputs.values())
        for start in range(0, len(rows), _CHUNK):
            stmt = insert(IngestInput).values(rows[start : start + _CHUNK])
            await session.execute(stmt.on_conflict_do_nothing(index_elements=["key"]))
        for row in positions.values():
            stmt = insert(IngestInput).values(row)
            changes = {"position": row["position"], "run_id": run_id, "recorded_at": now}
            await session.execute(stmt.on_conflict_do_update(index_elements=["key"], set_=changes))
        for source in sorted({r["source"] for r in rows if r["kind"] == "message"}):
            await self._prune_messages(session, pipeline, source, now)

    async def _prune_messages(
        self, session: AsyncSession, pipeline: str, source: str, now: datetime
    ) -> None:
        """Drop message ids past the retention time, then beyond the retention count."""
        same = (
            IngestInput.pipeline == pipeline,
            IngestInput.source == source,
            IngestInput.kind == "message",
        )
        cutoff = now - self.message_retention
        await session.execute(delete(IngestInput).where(*same, IngestInput.recorded_at < cutoff))
        boundary = await session.scalar(
            select(IngestInput.recorded_at)
            .where(*same)
            .order_by(IngestInput.recorded_at.desc())
            .offset(self.max_message_ids - 1)
            .limit(1)
        )
        if boundary is not None:
            await session.execute(
                delete(IngestInput).where(*same, IngestInput.recorded_at < boundary)
            )

    # --- recovery --------------------------------------------------------------------

    async def reconcile(
        self, pipeline: str, committed_run_ids: Iterable[str], *, abandon_uncommitted: bool = False
    ) -> ReconcileResult:
        """Mark committed runs with lost bookkeeping consumed, from their stored plans.

        ``committed_run_ids`` are the run ids found in the target table's snapshot
        summaries. With ``abandon_uncommitted`` (only while no other run of the pipeline
        can be in flight), runs not among them are settled as never committed: a
        ``running`` one becomes ``abandoned``, and neither is pending any more.
        """
        committed = set(committed_run_ids)
        now = self._now()
        recovered: list[str] = []
        abandoned: list[str] = []
        async with self._session() as session, session.begin():
            runs = (await session.scalars(self._pending_query(pipeline))).all()
            for run in runs:
                if run.run_id in committed:
                    plans = [SourcePlan.from_dict(p) for p in run.plan or []]
                    await self._record(session, pipeline, run.run_id, plans, now)
                    run.consumed_at = now
                    if run.status != "succeeded":
                        run.status = "recovered"
                        run.finished_at = run.finished_at or now
                    recovered.append(run.run_id)
                elif abandon_uncommitted and run.status != "succeeded":
                    if run.status == "running":
                        run.status = "abandoned"
                        run.finished_at = now
                        run.error = run.error or "never committed; its inputs are read again"
                    run.plan = None
                    abandoned.append(run.run_id)
        return ReconcileResult(tuple(recovered), tuple(abandoned))

    def _pending_query(self, pipeline: str) -> Any:
        return (
            select(IngestRun)
            .where(
                IngestRun.pipeline == pipeline,
                IngestRun.consumed_at.is_(None),
                IngestRun.plan.is_not(None),
                IngestRun.status.in_(_PENDING),
            )
            .order_by(IngestRun.started_at, IngestRun.run_id)
        )

    async def pending_run_ids(self, pipeline: str) -> list[str]:
        """Runs with a stored plan not yet marked consumed, oldest first: the ids to look
        for in the table's snapshot summaries before calling ``reconcile``."""
        query = self._pending_query(pipeline).with_only_columns(IngestRun.run_id)
        async with self._session() as session:
            return list((await session.scalars(query)).all())

    # --- run records -----------------------------------------------------------------

    async def start_run(
        self,
        pipeline: str,
        config_hash: str,
        plans: Sequence[SourcePlan] = (),
        *,
        run_id: str | None = None,
    ) -> RunRecord:
        """Record a run as ``running`` with its plans (what ``reconcile`` may need)."""
        check_name("pipeline", pipeline)
        check_name("config_hash", config_hash, 128)
        now = self._now()
        row = IngestRun(
            run_id=check_name("run_id", run_id, 64) if run_id is not None else new_run_id(now),
            pipeline=pipeline,
            config_hash=config_hash,
            status="running",
            started_at=now,
            plan=[plan.to_dict() for plan in plans] or None,
        )
        try:
            async with self._session() as session, session.begin():
                session.add(row)
        except IntegrityError:
            raise InvalidInputError(
                field="run_id", value=row.run_id, allowed="an id no other run has"
            ) from None
        return run_record(row)

    async def finish_run(
        self,
        run_id: str,
        status: FinalStatus,
        counts: RunCounts | Mapping[str, int],
        duration_s: float,
        snapshot_id: int | None = None,
        lineage: Any = None,
        error: str | None = None,
    ) -> RunRecord:
        """Record how a run ended: counts, duration, the snapshot it committed, lineage."""
        if status not in ("succeeded", "failed"):
            raise InvalidInputError(field="status", value=status, allowed="succeeded, failed")
        if duration_s < 0:
            raise InvalidInputError(field="duration_s", value=duration_s, allowed="0 or more")
        values = as_counts(counts)
        async with self._session() as session, session.begin():
            row = await session.get(IngestRun, run_id)
            if row is None:
                raise NotFoundError(
                    kind="ingest run", name=run_id, fix="start the run with start_run first"
                )
            row.status = status
            row.finished_at = self._now()
            row.duration_s = float(duration_s)
            row.rows_read, row.rows_written = values.read, values.written
            row.rows_quarantined, row.rows_filtered = values.quarantined, values.filtered
            row.snapshot_id = snapshot_id
            row.lineage = lineage
            row.error = None if error is None else error[:_MAX_ERROR]
        return run_record(row)

    async def list_runs(self, pipeline: str | None = None, limit: int = 50) -> list[RunRecord]:
        """Runs newest first, of one pipeline or of all."""
        if not isinstance(limit, int) or not 1 <= limit <= 10_000:
            raise InvalidInputError(field="limit", value=limit, allowed="1 to 10000")
        query = select(IngestRun).order_by(IngestRun.started_at.desc(), IngestRun.run_id.desc())
        if pipeline is not None:
            query = query.where(IngestRun.pipeline == pipeline)
        async with self._session() as session:
            rows = (await session.scalars(query.limit(limit))).all()
        return [run_record(row) for row in rows]

    async def get_run(self, run_id: str) -> RunRecord:
        """One run; ``NotFoundError`` naming it when there is none."""
        async with self._session() as session:
            row = await session.get(IngestRun, run_id)
        if row is None:
            raise NotFoundError(
                kind="ingest run", name=run_id, fix="list runs with list_runs(pipeline)"
            )
        return run_record(row)

    async def count_inputs(self, pipeline: str) -> int:
        """How many inputs (and positions) ``pipeline`` has recorded."""
        query = select(func.count()).where(IngestInput.pipeline == pipeline)
        async with self._session() as session:
            return int(await session.scalar(query) or 0)
