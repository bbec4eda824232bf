"""Forge state on the platform database: training runs and the model registry's tables.

``ForgeRunStore`` keeps one record per training run (spec, pinned Lake snapshot, where
its trials live, how it ended); ``RegistryStore`` (``cluster/db/registry_store.py``) is
the database side of the model registry. Both come from migration 0004.

Build them from an engine (``from_engine``), or from settings with
``open_forge_stores``, which migrates the schema when it is behind and disposes of the
engine afterwards.
"""

from __future__ import annotations

import math
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, Literal, Self, get_args

from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncEngine

from cluster.db.engine import create_engine, session_factory
from cluster.db.migrate import ensure_schema
from cluster.db.models import ForgeRun
from cluster.db.registry_store import RegistryStore
from cluster.db.store import PlatformStore, upsert_insert
from cluster.errors import InvalidInputError, NotFoundError
from cluster.settings import Settings

__all__ = [
    "RUN_STATES",
    "ForgeRunStore",
    "ForgeStores",
    "RegistryStore",
    "RunState",
    "json_safe",
    "open_forge_stores",
]

RunState = Literal["pending", "running", "succeeded", "failed", "interrupted"]
RUN_STATES: tuple[str, ...] = get_args(RunState)

_MAX_RUN_ID = 100
_MAX_NAME = 200
_MAX_TABLE = 300
_MAX_CREATED_BY = 100
_MAX_ERROR = 4000
_MAX_LIST = 1000
_MAX_PATH = 4096
# What ``update`` may change; the id and the timestamps are the store's own.
_UPDATABLE = (
    "name",
    "spec",
    "config_hash",
    "state",
    "experiment_path",
    "lake_table",
    "snapshot_id",
    "results",
    "best",
    "model_name",
    "model_version",
    "error",
)
_Record = dict[str, Any]


def _utcnow() -> datetime:
    return datetime.now(UTC)


def json_safe(value: Any) -> Any:
    """``value`` with NaN and infinities as None: JSON has no such numbers, and
    PostgreSQL refuses them (a diverged trial's loss is NaN)."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {key: json_safe(item) for key, item in value.items()}
    if isinstance(value, list | tuple):
        return [json_safe(item) for item in value]
    return value


def _check_text(field: str, value: Any, limit: int, *, empty: bool = False) -> str:
    low = 0 if empty else 1
    if not isinstance(value, str) or not low <= len(value) <= limit:
        raise InvalidInputError(
            field=field, value=value, allowed=f"a string of {low} to {limit} characters"
        )
    return value


def _check_state(state: Any) -> str:
    if state not in RUN_STATES:
        raise InvalidInputError(field="state", value=state, allowed=", ".join(RUN_STATES))
    return str(state)


def _check_optional_int(field: str, value: Any) -> int | None:
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int):
        raise InvalidInputError(field=field, value=value, allowed="an int or None")
    return value


def _check_field(field: str, value: Any) -> Any:
    """``value`` checked as the column ``field`` holds it (``update``'s one gate)."""
    if field == "state":
        return _check_state(value)
    if field in ("snapshot_id", "model_version"):
        return _check_optional_int(field, value)
    if field in ("spec", "results", "best"):
        if field == "spec" and not isinstance(value, dict):
            raise InvalidInputError(
                field="spec", value=type(value).__name__, allowed="a JSON object (dict)"
            )
        return json_safe(value)
    if field == "error":
        return None if value is None else str(value)[:_MAX_ERROR]
    if field == "model_name":
        return None if value is None else _check_text(field, value, _MAX_NAME)
    limits = {"name": _MAX_NAME, "config_hash": 64, "lake_table": _MAX_TABLE}
    return _check_text(field, value, limits.get(field, _MAX_PATH), empty=field == "experiment_path")


def _record(row: ForgeRun) -> _Record:
    return {
        "run_id": row.run_id,
        "name": row.name,
        "spec": row.spec,
        "config_hash": row.config_hash,
        "state": row.state,
        "experiment_path": row.experiment_path,
        "lake_table": row.lake_table,
        "snapshot_id": row.snapshot_id,
        "results": row.results,
        "best": row.best,
        "model_name": row.model_name,
        "model_version": row.model_version,
        "error": row.error,
        "created_by": row.created_by,
        "created_at": row.created_at.isoformat(),
        "updated_at": row.updated_at.isoformat(),
    }


class ForgeRunStore(PlatformStore):
    """Training-run records: plain dicts with every column, times ISO 8601 UTC.

    A run id is the run's identity: starting it again resumes it (same pinned snapshot,
    same experiment path) instead of starting a second run.
    """

    table_name = ForgeRun.__tablename__

    @classmethod
    def from_engine(cls, engine: AsyncEngine, now: Callable[[], datetime] = _utcnow) -> Self:
        """The store over ``engine``'s sessions; ``now`` is its only clock (aware UTC)."""
        return cls(session_factory(engine), now)

    async def start(
        self,
        run_id: str,
        *,
        name: str,
        spec: dict[str, Any],
        config_hash: str,
        experiment_path: str,
        lake_table: str,
        snapshot_id: int | None,
        created_by: str | None = None,
    ) -> _Record:
        """Record a new run as ``running``; for a known id, only set it ``running`` again.

        A resubmitted run gets its first record back (pinned snapshot, spec, experiment
        path unchanged), so it resumes where it stopped instead of training on new data.
        """
        values = {
            "run_id": _check_text("run_id", run_id, _MAX_RUN_ID),
            "name": _check_field("name", name),
            "spec": _check_field("spec", spec),
            "config_hash": _check_field("config_hash", config_hash),
            "experiment_path": _check_field("experiment_path", experiment_path),
            "lake_table": _check_field("lake_table", lake_table),
            "snapshot_id": _check_field("snapshot_id", snapshot_id),
            "created_by": None
            if created_by is None
            else _check_text("created_by", created_by, _MAX_CREATED_BY),
        }
        now = self._now()
        async with self._session() as session, session.begin():
            stmt = upsert_insert(session)(ForgeRun).values(
                **values, state="running", created_at=now, updated_at=now
            )
            changes = {"state": "running", "updated_at": now}
            await session.execute(
                stmt.on_conflict_do_update(index_elements=["run_id"], set_=changes)
            )
            row = await session.scalar(
                select(ForgeRun)
                .where(ForgeRun.run_id == run_id)
                .execution_options(populate_existing=True)
            )
        assert row is not None  # just upserted in this transaction
        return _record(row)

    async def update(self, run_id: str, /, **fields: Any) -> _Record:
        """Change the given columns (state, results, best, model_name, error, ...).

        Unknown columns are ``InvalidInputError``; an unknown run is ``NotFoundError``.
        NaN and infinities in JSON columns are stored as null; ``error`` is cut at 4000.
        """
        unknown = sorted(set(fields) - set(_UPDATABLE))
        if unknown:
            raise InvalidInputError(
                field="run fields", value=unknown, allowed=f"any of {', '.join(_UPDATABLE)}"
            )
        checked = {field: _check_field(field, value) for field, value in fields.items()}
        async with self._session() as session, session.begin():
            row = await session.get(ForgeRun, run_id)
            if row is None:
                raise NotFoundError(
                    kind="forge run", name=run_id, fix="start it first (ForgeRunStore.start)"
                )
            for field, value in checked.items():
                setattr(row, field, value)
            row.updated_at = self._now()
        return _record(row)

    async def get(self, run_id: str) -> _Record | None:
        """The run's record, or None when no run has that id."""
        async with self._session() as session:
            row = await session.get(ForgeRun, run_id)
        return None if row is None else _record(row)

    async def list(self, limit: int = 50, name: str | None = None) -> list[_Record]:
        """The newest ``limit`` runs (of experiment ``name`` when given), newest first."""
        if isinstance(limit, bool) or not isinstance(limit, int) or not 1 <= limit <= _MAX_LIST:
            raise InvalidInputError(field="limit", value=limit, allowed=f"1 to {_MAX_LIST}")
        query = select(ForgeRun).order_by(ForgeRun.created_at.desc(), ForgeRun.run_id.desc())
        if name is not None:
            query = query.where(ForgeRun.name == name)
        async with self._session() as session:
            rows = (await session.scalars(query.limit(limit))).all()
        return [_record(row) for row in rows]


@dataclass(frozen=True)
class ForgeStores:
    """Both Forge stores over one engine."""

    runs: ForgeRunStore
    registry: RegistryStore


@asynccontextmanager
async def open_forge_stores(
    settings: Settings, now: Callable[[], datetime] = _utcnow
) -> AsyncIterator[ForgeStores]:
    """Both stores on the settings' platform database, migrated to head when behind.

    The engine is disposed of when the block ends.
    """
    await ensure_schema(settings)
    engine = create_engine(settings)
    try:
        yield ForgeStores(
            runs=ForgeRunStore.from_engine(engine, now),
            registry=RegistryStore.from_engine(engine, now),
        )
    finally:
        await engine.dispose()
