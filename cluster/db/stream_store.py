"""Stream state on the platform database: topology checkpoints and deployed topologies.

``SqlCheckpointStore`` is the durable ``CheckpointStore`` (``actors/stream/ports.py``):
saving a checkpoint is a topology's commit point, so a save is one upsert in one
transaction, and the newest epoch is what a restarted topology resumes from.
``TopologyStore`` keeps each deployed topology's spec and status (migration 0003).

Build them from an engine (``from_engine``), or from settings with
``open_stream_stores``, which migrates the schema when it is behind and disposes of
the engine afterwards.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, Literal, Self, get_args

from sqlalchemy import delete, select
from sqlalchemy.ext.asyncio import AsyncEngine

from cluster.db.engine import create_engine, session_factory
from cluster.db.migrate import ensure_schema
from cluster.db.models import StreamCheckpoint, StreamTopology
from cluster.db.store import PlatformStore, upsert_insert
from cluster.errors import InvalidInputError, NotFoundError
from cluster.settings import Settings

__all__ = [
    "TOPOLOGY_STATUSES",
    "SqlCheckpointStore",
    "StreamStores",
    "TopologyStatus",
    "TopologyStore",
    "open_stream_stores",
]

TopologyStatus = Literal["deployed", "running", "stopped", "failed", "finished"]
TOPOLOGY_STATUSES: tuple[str, ...] = get_args(TopologyStatus)

_MAX_NAME = 200
_MAX_CREATED_BY = 100
_MAX_ERROR = 4000
_MAX_EPOCH = 2**63 - 1  # BIGINT
# A topology's record as the store hands it out (a plain, JSON-able dict).
_Record = dict[str, Any]
_Records = list[_Record]


def _utcnow() -> datetime:
    return datetime.now(UTC)


def _check_topology(name: str) -> str:
    if not isinstance(name, str) or not name or len(name) > _MAX_NAME or not name.isprintable():
        raise InvalidInputError(
            field="topology", value=name, allowed=f"1 to {_MAX_NAME} printable characters"
        )
    return name


def _check_epoch(epoch: int) -> int:
    if isinstance(epoch, bool) or not isinstance(epoch, int) or not 0 <= epoch <= _MAX_EPOCH:
        raise InvalidInputError(
            field="epoch", value=epoch, allowed=f"an int from 0 to {_MAX_EPOCH}"
        )
    return epoch


class _StreamStore(PlatformStore):
    """What both stream stores share: how they are built from an engine."""

    @classmethod
    def from_engine(cls, engine: AsyncEngine, now: Callable[[], datetime] = _utcnow) -> Self:
        """The store over ``engine``'s sessions; ``now`` is its only clock (aware UTC)."""
        return cls(session_factory(engine), now)


class SqlCheckpointStore(_StreamStore):
    """``CheckpointStore`` on the platform database (SQLite or PostgreSQL).

    Payloads are opaque bytes (a few MB is fine); epochs are non-negative 64-bit ints.
    """

    table_name = StreamCheckpoint.__tablename__

    async def save(self, topology: str, epoch: int, payload: bytes) -> None:
        """Store epoch ``epoch`` atomically; saving the same epoch again replaces it."""
        _check_topology(topology)
        _check_epoch(epoch)
        data = bytes(payload)
        now = self._now()
        async with self._session() as session, session.begin():
            stmt = upsert_insert(session)(StreamCheckpoint).values(
                topology=topology, epoch=epoch, created_at=now, size=len(data), payload=data
            )
            changes = {"created_at": now, "size": len(data), "payload": data}
            await session.execute(
                stmt.on_conflict_do_update(index_elements=["topology", "epoch"], set_=changes)
            )

    async def latest(self, topology: str) -> tuple[int, bytes] | None:
        """The newest saved ``(epoch, payload)``, or None."""
        query = (
            select(StreamCheckpoint.epoch, StreamCheckpoint.payload)
            .where(StreamCheckpoint.topology == topology)
            .order_by(StreamCheckpoint.epoch.desc())
            .limit(1)
        )
        async with self._session() as session:
            row = (await session.execute(query)).first()
        if row is None:
            return None
        return int(row.epoch), bytes(row.payload)

    async def epochs(self, topology: str) -> list[int]:
        """The saved epochs of ``topology``, oldest first (for inspection and tests)."""
        query = (
            select(StreamCheckpoint.epoch)
            .where(StreamCheckpoint.topology == topology)
            .order_by(StreamCheckpoint.epoch)
        )
        async with self._session() as session:
            return [int(epoch) for epoch in (await session.scalars(query)).all()]

    async def prune(self, topology: str, keep: int) -> int:
        """Delete all but the newest ``keep`` checkpoints; returns how many went."""
        if isinstance(keep, bool) or not isinstance(keep, int) or keep < 0:
            raise InvalidInputError(field="keep", value=keep, allowed="an int of 0 or more")
        same = StreamCheckpoint.topology == topology
        async with self._session() as session, session.begin():
            # The newest epoch that goes: every older one goes with it.
            boundary = await session.scalar(
                select(StreamCheckpoint.epoch)
                .where(same)
                .order_by(StreamCheckpoint.epoch.desc())
                .offset(keep)
                .limit(1)
            )
            if boundary is None:
                return 0
            result = await session.execute(
                delete(StreamCheckpoint).where(same, StreamCheckpoint.epoch <= boundary)
            )
        return int(getattr(result, "rowcount", 0) or 0)

    async def drop(self, topology: str) -> int:
        """Delete every checkpoint of the topology (a fresh deploy); returns how many."""
        async with self._session() as session, session.begin():
            result = await session.execute(
                delete(StreamCheckpoint).where(StreamCheckpoint.topology == topology)
            )
        return int(getattr(result, "rowcount", 0) or 0)


def _record(row: StreamTopology) -> _Record:
    return {
        "name": row.name,
        "spec": row.spec,
        "status": row.status,
        "created_at": row.created_at.isoformat(),
        "updated_at": row.updated_at.isoformat(),
        "created_by": row.created_by,
        "error": row.error,
    }


class TopologyStore(_StreamStore):
    """Deployed topologies: spec, status and last error, one row per name.

    Records are plain dicts: ``name``, ``spec``, ``status``, ``created_at`` and
    ``updated_at`` (ISO 8601, UTC), ``created_by``, ``error``.
    """

    table_name = StreamTopology.__tablename__

    async def put(self, name: str, spec: dict[str, Any], created_by: str | None = None) -> _Record:
        """Deploy ``name``: insert it, or replace its spec; either way it is ``deployed``.

        A redeploy clears the error and keeps ``created_at``/``created_by`` of the first.
        """
        _check_topology(name)
        if not isinstance(spec, dict):
            raise InvalidInputError(
                field="spec", value=type(spec).__name__, allowed="a JSON object (dict)"
            )
        if created_by is not None and len(created_by) > _MAX_CREATED_BY:
            raise InvalidInputError(
                field="created_by", value=created_by, allowed=f"at most {_MAX_CREATED_BY} chars"
            )
        now = self._now()
        async with self._session() as session, session.begin():
            stmt = upsert_insert(session)(StreamTopology).values(
                name=name,
                spec=spec,
                status="deployed",
                created_at=now,
                updated_at=now,
                created_by=created_by,
                error=None,
            )
            changes = {"spec": spec, "status": "deployed", "updated_at": now, "error": None}
            await session.execute(stmt.on_conflict_do_update(index_elements=["name"], set_=changes))
            row = await session.scalar(
                select(StreamTopology)
                .where(StreamTopology.name == name)
                .execution_options(populate_existing=True)
            )
        assert row is not None  # just upserted in this transaction
        return _record(row)

    async def get(self, name: str) -> _Record | None:
        """The topology's record, or None when none has that name."""
        async with self._session() as session:
            row = await session.get(StreamTopology, name)
        return None if row is None else _record(row)

    async def list(self) -> _Records:
        """Every deployed topology, by name."""
        async with self._session() as session:
            rows = (
                await session.scalars(select(StreamTopology).order_by(StreamTopology.name))
            ).all()
        return [_record(row) for row in rows]

    async def set_status(self, name: str, status: str, error: str | None = None) -> _Record:
        """Record where ``name`` stands (and why, for ``failed``); ``NotFoundError`` if unknown.

        ``error`` replaces the previous one (None clears it); long text is cut at 4000.
        """
        if status not in TOPOLOGY_STATUSES:
            raise InvalidInputError(
                field="status", value=status, allowed=", ".join(TOPOLOGY_STATUSES)
            )
        async with self._session() as session, session.begin():
            row = await session.get(StreamTopology, name)
            if row is None:
                raise NotFoundError(
                    kind="stream topology", name=name, fix="deploy it first (TopologyStore.put)"
                )
            row.status = status
            row.error = None if error is None else error[:_MAX_ERROR]
            row.updated_at = self._now()
        return _record(row)

    async def delete(self, name: str) -> bool:
        """Forget ``name``; True when it existed. Its checkpoints are not touched."""
        async with self._session() as session, session.begin():
            result = await session.execute(
                delete(StreamTopology).where(StreamTopology.name == name)
            )
        return bool(getattr(result, "rowcount", 0))


@dataclass(frozen=True)
class StreamStores:
    """Both stream stores over one engine."""

    checkpoints: SqlCheckpointStore
    topologies: TopologyStore


@asynccontextmanager
async def open_stream_stores(
    settings: Settings, now: Callable[[], datetime] = _utcnow
) -> AsyncIterator[StreamStores]:
    """Both stores on the settings' platform database, migrated to head when behind.

    The engine is disposed of when the block ends.
    """
    await ensure_schema(settings)
    engine = create_engine(settings)
    try:
        yield StreamStores(
            checkpoints=SqlCheckpointStore.from_engine(engine, now),
            topologies=TopologyStore.from_engine(engine, now),
        )
    finally:
        await engine.dispose()
