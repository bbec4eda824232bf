"""The model registry's database side: models, numbered versions, aliases and their history.

Versions are numbered per model (1, 2, ...) inside the inserting transaction; the
``(name, version)`` primary key turns a race between two registrations into a conflict,
and the loser retries with the next number. Every alias move appends one row to
``model_alias_history`` in the same transaction as the move, so "which version was
``production`` at time T" is one indexed query (``alias_at``). Canaries on aliases
(``cluster/db/canary_store.py``) share the alias lock: moving an alias onto its canary's
version ends the canary, and an alias with a canary is not removed.

Validation of names, lineage and metrics is the registry's (``actors/forge/registry.py``);
this store trusts what it is given and keeps the bookkeeping consistent.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Mapping
from datetime import UTC, datetime
from typing import Any, Self

from sqlalchemy import func, insert, select, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession

from cluster.db.canary_store import CanaryMethods
from cluster.db.engine import session_factory
from cluster.db.models import ModelAlias, ModelAliasEvent, ModelVersion, RegisteredModel
from cluster.db.store import upsert_insert
from cluster.errors import NotFoundError, PlatformStateError

__all__ = ["ANYWHERE", "VERSION_FIELDS", "RegistryStore"]

# The columns of a version the caller provides; the store adds name, version, path, times.
VERSION_FIELDS = (
    "sha256",
    "format",
    "model_spec",
    "signature",
    "metrics",
    "params",
    "tags",
    "lineage",
    "size",
)
_ATTEMPTS = 8
_Record = dict[str, Any]


class _Anything:
    """``set_alias``'s default expectation: move the alias from wherever it points."""


ANYWHERE = _Anything()


def _utcnow() -> datetime:
    return datetime.now(UTC)


def _model(row: RegisteredModel) -> _Record:
    return {
        "name": row.name,
        "description": row.description,
        "created_at": row.created_at.isoformat(),
        "created_by": row.created_by,
    }


def _version(row: ModelVersion, aliases: list[str]) -> _Record:
    return {
        "name": row.name,
        "version": row.version,
        "sha256": row.sha256,
        "artifact_path": row.artifact_path,
        "format": row.format,
        "model_spec": row.model_spec,
        "signature": row.signature,
        "metrics": row.metrics,
        "params": row.params,
        "tags": row.tags,
        "lineage": row.lineage,
        "size": row.size,
        "aliases": sorted(aliases),
        "created_at": row.created_at.isoformat(),
        "created_by": row.created_by,
    }


def _alias(row: ModelAlias) -> _Record:
    return {
        "name": row.name,
        "alias": row.alias,
        "version": row.version,
        "updated_at": row.updated_at.isoformat(),
        "updated_by": row.updated_by,
    }


def _event(row: ModelAliasEvent) -> _Record:
    return {
        "id": row.id,
        "name": row.name,
        "alias": row.alias,
        "from_version": row.from_version,
        "to_version": row.to_version,
        "actor": row.actor,
        "reason": row.reason,
        "at": row.at.isoformat(),
    }


class RegistryStore(CanaryMethods):
    """Models, versions, aliases, alias history and canaries on the platform database.

    Records are plain dicts, times ISO 8601 UTC. A version record carries the aliases
    that point at it now (``aliases``, sorted).
    """

    table_name = "the model registry tables"

    @classmethod
    def from_engine(cls, engine: AsyncEngine, now: Callable[[], datetime] = _utcnow) -> Self:
        """The store over ``engine``'s sessions; ``now`` is its only clock (aware UTC)."""
        return cls(session_factory(engine), now)

    # ---- versions --------------------------------------------------------------------

    async def add_version(
        self,
        name: str,
        fields: Mapping[str, Any],
        *,
        artifact_path: Callable[[int], str],
        before_commit: Callable[[int], Awaitable[None]] | None = None,
        description: str | None = None,
        created_by: str | None = None,
    ) -> _Record:
        """Insert the next version of ``name`` (creating the model on its first version).

        ``fields`` holds ``VERSION_FIELDS``; ``artifact_path(version)`` names its file.
        ``before_commit(version)`` runs once the number is this transaction's (the row is
        inserted, a concurrent insert of it waits or fails): the place to write the
        artifact, so no two writers ever write the same version's file. A raise there
        rolls the version back. A non-None ``description`` replaces the model's.
        """
        missing = sorted(set(VERSION_FIELDS) - set(fields))
        if missing:
            raise ValueError(f"add_version needs the fields {missing}")
        for _attempt in range(_ATTEMPTS):
            try:
                return await self._add_version_once(
                    name, fields, artifact_path, before_commit, description, created_by
                )
            except IntegrityError:
                continue  # another registration took this number: take the next one
        raise PlatformStateError(
            f"could not number a new version of model {name!r}: {_ATTEMPTS} concurrent "
            "registrations took each number first; register it again",
            name=name,
        )

    async def _add_version_once(
        self,
        name: str,
        fields: Mapping[str, Any],
        artifact_path: Callable[[int], str],
        before_commit: Callable[[int], Awaitable[None]] | None,
        description: str | None,
        created_by: str | None,
    ) -> _Record:
        now = self._now()
        async with self._session() as session, session.begin():
            # A write first: on SQLite it takes the database's write lock, so the
            # max() below cannot go stale before this transaction commits.
            stmt = upsert_insert(session)(RegisteredModel).values(
                name=name, description=description, created_at=now, created_by=created_by
            )
            if description is None:
                stmt = stmt.on_conflict_do_nothing(index_elements=["name"])
            else:
                stmt = stmt.on_conflict_do_update(
                    index_elements=["name"], set_={"description": description}
                )
            await session.execute(stmt)
            latest = await session.scalar(
                select(func.max(ModelVersion.version)).where(ModelVersion.name == name)
            )
            version = int(latest or 0) + 1
            values = {key: fields[key] for key in VERSION_FIELDS}
            await session.execute(
                insert(ModelVersion).values(
                    name=name,
                    version=version,
                    artifact_path=artifact_path(version),
                    created_at=now,
                    created_by=created_by,
                    **values,
                )
            )
            if before_commit is not None:
                await before_commit(version)
            row = await session.get(ModelVersion, (name, version))
        assert row is not None  # inserted in this transaction
        return _version(row, [])

    async def version(self, name: str, version: int) -> _Record | None:
        """Version ``version`` of ``name``, or None."""
        async with self._session() as session:
            row = await session.get(ModelVersion, (name, version))
            if row is None:
                return None
            aliases = await self._aliases_of(session, name)
        return _version(row, [a for a, v in aliases.items() if v == version])

    async def versions(self, name: str) -> list[_Record]:
        """Every version of ``name``, oldest first (empty for an unknown model)."""
        async with self._session() as session:
            rows = (
                await session.scalars(
                    select(ModelVersion)
                    .where(ModelVersion.name == name)
                    .order_by(ModelVersion.version)
                )
            ).all()
            aliases = await self._aliases_of(session, name)
        return [_version(row, [a for a, v in aliases.items() if v == row.version]) for row in rows]

    # ---- models ----------------------------------------------------------------------

    async def model(self, name: str) -> _Record | None:
        """The model's record with ``latest_version``, ``version_count`` and ``aliases``."""
        found = await self._models(name)
        return found[0] if found else None

    async def models(self) -> list[_Record]:
        """Every model by name, each with ``latest_version``, ``version_count``, ``aliases``."""
        return await self._models(None)

    async def _models(self, name: str | None) -> list[_Record]:
        models = select(RegisteredModel).order_by(RegisteredModel.name)
        stats = select(
            ModelVersion.name, func.max(ModelVersion.version), func.count(ModelVersion.version)
        ).group_by(ModelVersion.name)
        aliases = select(ModelAlias.name, ModelAlias.alias, ModelAlias.version).order_by(
            ModelAlias.alias
        )
        if name is not None:
            models = models.where(RegisteredModel.name == name)
            stats = stats.where(ModelVersion.name == name)
            aliases = aliases.where(ModelAlias.name == name)
        async with self._session() as session:
            rows = (await session.scalars(models)).all()
            counts = {n: (int(m), int(c)) for n, m, c in (await session.execute(stats)).all()}
            pointers: dict[str, dict[str, int]] = {}
            for model_name, alias, version in (await session.execute(aliases)).all():
                pointers.setdefault(model_name, {})[alias] = int(version)
        records = []
        for row in rows:
            latest, count = counts.get(row.name, (None, 0))
            records.append(
                {
                    **_model(row),
                    "latest_version": latest,
                    "version_count": count,
                    "aliases": pointers.get(row.name, {}),
                }
            )
        return records

    # ---- aliases ---------------------------------------------------------------------

    async def aliases(self, name: str) -> list[_Record]:
        """The aliases of ``name`` as they point now, by alias."""
        query = select(ModelAlias).where(ModelAlias.name == name).order_by(ModelAlias.alias)
        async with self._session() as session:
            rows = (await session.scalars(query)).all()
        return [_alias(row) for row in rows]

    async def _aliases_of(self, session: AsyncSession, name: str) -> dict[str, int]:
        query = select(ModelAlias.alias, ModelAlias.version).where(ModelAlias.name == name)
        return {alias: int(version) for alias, version in (await session.execute(query)).all()}

    async def set_alias(
        self,
        name: str,
        alias: str,
        version: int,
        *,
        actor: str,
        reason: str | None = None,
        expect_previous: int | _Anything | None = ANYWHERE,
    ) -> _Record:
        """Point ``alias`` at ``version`` and append the move to the history.

        Returns the alias record plus ``previous_version`` and ``changed``; pointing it
        where it already points changes nothing and appends no history.
        ``NotFoundError`` when the version does not exist; with ``expect_previous``
        (a version, or None for "unset"), ``PlatformStateError`` when the alias points
        elsewhere by now (a compare-and-set: the promotion gate's guard).
        """
        for _attempt in range(_ATTEMPTS):
            try:
                return await self._set_alias_once(
                    name, alias, version, actor, reason, expect_previous
                )
            except IntegrityError:
                continue  # a concurrent first move of the same alias: read it again
        raise PlatformStateError(
            f"could not move alias {alias!r} of model {name!r}: it kept moving concurrently; "
            "try again",
            name=name,
            alias=alias,
        )

    async def _lock_alias(self, session: AsyncSession, name: str, alias: str) -> ModelAlias | None:
        # A no-op UPDATE first: it takes SQLite's write lock and PostgreSQL's row lock,
        # so the previous version read next is still the previous one at commit.
        same = (ModelAlias.name == name, ModelAlias.alias == alias)
        await session.execute(
            update(ModelAlias).where(*same).values(updated_at=ModelAlias.updated_at)
        )
        return await session.scalar(
            select(ModelAlias).where(*same).execution_options(populate_existing=True)
        )

    async def _set_alias_once(
        self,
        name: str,
        alias: str,
        version: int,
        actor: str,
        reason: str | None,
        expect_previous: int | _Anything | None,
    ) -> _Record:
        now = self._now()
        async with self._session() as session, session.begin():
            row = await self._lock_alias(session, name, alias)
            if await session.get(ModelVersion, (name, version)) is None:
                raise NotFoundError(
                    kind=f"version of model {name!r}", name=str(version), fix="register it first"
                )
            previous = None if row is None else row.version
            if not isinstance(expect_previous, _Anything) and previous != expect_previous:
                raise PlatformStateError(
                    f"alias {alias!r} of model {name!r} moved from version {expect_previous} "
                    f"to {previous} meanwhile; nothing changed: look at its history and "
                    "promote again",
                    name=name,
                    alias=alias,
                )
            if previous == version:
                assert row is not None
                return {**_alias(row), "previous_version": previous, "changed": False}
            row = await self._move_alias(session, row, name, alias, version, actor, reason, now)
        return {**_alias(row), "previous_version": previous, "changed": True}

    async def _move_alias(
        self,
        session: AsyncSession,
        row: ModelAlias | None,
        name: str,
        alias: str,
        version: int,
        actor: str,
        reason: str | None,
        now: datetime,
    ) -> ModelAlias:
        """Point the locked alias ``row`` (None: a new alias) at ``version`` and append
        the move to the history; the one alias-move path (``promote_canary`` uses it)."""
        previous = None if row is None else row.version
        await self._stop_canary_on(session, name, alias, version, previous, actor, now)
        if row is None:
            row = ModelAlias(name=name, alias=alias)
            session.add(row)
        row.version, row.updated_at, row.updated_by = version, now, actor
        session.add(
            ModelAliasEvent(
                name=name,
                alias=alias,
                from_version=previous,
                to_version=version,
                actor=actor,
                reason=reason,
                at=now,
            )
        )
        return row

    async def remove_alias(
        self, name: str, alias: str, *, actor: str, reason: str | None = None
    ) -> _Record | None:
        """Delete ``alias`` and append its removal (``to_version`` None) to the history.

        Returns the history event, or None when the alias did not exist.
        ``CanaryStateError`` while the alias has a canary.
        """
        now = self._now()
        async with self._session() as session, session.begin():
            row = await self._lock_alias(session, name, alias)
            if row is None:
                return None
            await self._refuse_removal_with_canary(session, name, alias)
            event = ModelAliasEvent(
                name=name,
                alias=alias,
                from_version=row.version,
                to_version=None,
                actor=actor,
                reason=reason,
                at=now,
            )
            await session.delete(row)
            session.add(event)
        return _event(event)

    async def alias_at(self, name: str, alias: str, at: datetime) -> int | None:
        """The version ``alias`` pointed at, at time ``at``; None when none (or removed).

        One query: the ``to_version`` of the newest history event at or before ``at``.
        """
        query = (
            select(ModelAliasEvent.to_version)
            .where(
                ModelAliasEvent.name == name,
                ModelAliasEvent.alias == alias,
                ModelAliasEvent.at <= at,
            )
            .order_by(ModelAliasEvent.at.desc(), ModelAliasEvent.id.desc())
            .limit(1)
        )
        async with self._session() as session:
            version = await session.scalar(query)
        return None if version is None else int(version)

    async def history(self, name: str, alias: str | None = None) -> list[_Record]:
        """Every alias move of ``name`` (of ``alias`` only, when given), oldest first."""
        query = select(ModelAliasEvent).where(ModelAliasEvent.name == name)
        if alias is not None:
            query = query.where(ModelAliasEvent.alias == alias)
        query = query.order_by(ModelAliasEvent.at, ModelAliasEvent.id)
        async with self._session() as session:
            rows = (await session.scalars(query)).all()
        return [_event(row) for row in rows]
