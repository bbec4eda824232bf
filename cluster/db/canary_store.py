"""Canaries on model aliases, the database side: set, clear, promote, list, history.

``CanaryMethods`` is a base of ``RegistryStore`` (``cluster/db/registry_store.py``):
canaries share its alias lock, so a canary write, an alias move and an alias removal
on the same alias run one after the other. Every check of state (the alias exists, it
points elsewhere, the canary is still the one promoted) happens inside the writing
transaction, after the lock, so two writers cannot both pass it. Every change appends
one ``model_canary_events`` row in the same transaction.

Checks of the caller's values (percent, header name, who) are the registry's
(``actors/forge/canary.py``); this store trusts them.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any, ClassVar, Literal, get_args

from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession

from cluster.db.models import ModelAlias, ModelCanary, ModelCanaryEvent, ModelVersion
from cluster.db.store import PlatformStore
from cluster.errors import NotFoundError, PlatformStateError

__all__ = ["CANARY_ACTIONS", "CanaryAction", "CanaryMethods", "CanaryStateError"]

CanaryAction = Literal["start", "replace", "rollback", "promote", "stop"]
CANARY_ACTIONS: tuple[str, ...] = get_args(CanaryAction)
_Record = dict[str, Any]


class CanaryStateError(PlatformStateError):
    """The alias's state forbids the canary command (HTTP 409)."""

    code: ClassVar[str] = "canary_conflict"

    def __init__(self, *, name: str, alias: str, problem: str, fix: str) -> None:
        super().__init__(
            f"alias {alias!r} of model {name!r}: {problem}; {fix}",
            name=name,
            alias=alias,
            problem=problem,
        )


def canary_record(row: ModelCanary) -> _Record:
    """A canary as callers (and the Serve side) read it."""
    return {
        "name": row.name,
        "alias": row.alias,
        "version": row.version,
        "percent": row.percent,
        "sticky_key": row.sticky_key,
        "created_at": row.created_at.isoformat(),
        "created_by": row.created_by,
    }


def _event(row: ModelCanaryEvent) -> _Record:
    return {
        "id": row.id,
        "name": row.name,
        "alias": row.alias,
        "action": row.action,
        "version": row.version,
        "percent": row.percent,
        "sticky_key": row.sticky_key,
        "alias_version": row.alias_version,
        "actor": row.actor,
        "reason": row.reason,
        "at": row.at.isoformat(),
    }


def _describe(row: ModelCanary) -> str:
    sticky = f", sticky by {row.sticky_key}" if row.sticky_key else ""
    return f"a canary sending {row.percent:g}% to version {row.version}{sticky}"


class CanaryMethods(PlatformStore):
    """The canary half of ``RegistryStore``; records are plain dicts, times ISO UTC."""

    # ---- provided by RegistryStore -------------------------------------------------

    async def _lock_alias(self, session: AsyncSession, name: str, alias: str) -> ModelAlias | None:
        raise NotImplementedError

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
        raise NotImplementedError

    async def _aliases_of(self, session: AsyncSession, name: str) -> dict[str, int]:
        raise NotImplementedError

    # ---- reads ---------------------------------------------------------------------

    async def canaries(self, name: str | None = None) -> list[_Record]:
        """Active canaries (of ``name`` only, when given), by model and alias: one query."""
        query = select(ModelCanary).order_by(ModelCanary.name, ModelCanary.alias)
        if name is not None:
            query = query.where(ModelCanary.name == name)
        async with self._session() as session:
            rows = (await session.scalars(query)).all()
        return [canary_record(row) for row in rows]

    async def all_aliases(self) -> list[_Record]:
        """Every alias of every model, ``{"name", "alias", "version"}``, in one query.

        The Serve side polls this every second from each gateway replica: it selects
        three columns of one table and builds nothing else.
        """
        query = select(ModelAlias.name, ModelAlias.alias, ModelAlias.version).order_by(
            ModelAlias.name, ModelAlias.alias
        )
        async with self._session() as session:
            rows = (await session.execute(query)).all()
        return [{"name": n, "alias": a, "version": int(v)} for n, a, v in rows]

    async def canary_history(self, name: str, alias: str | None = None) -> list[_Record]:
        """Every canary event of ``name`` (of ``alias`` only, when given), oldest first."""
        query = select(ModelCanaryEvent).where(ModelCanaryEvent.name == name)
        if alias is not None:
            query = query.where(ModelCanaryEvent.alias == alias)
        query = query.order_by(ModelCanaryEvent.at, ModelCanaryEvent.id)
        async with self._session() as session:
            rows = (await session.scalars(query)).all()
        return [_event(row) for row in rows]

    # ---- writes --------------------------------------------------------------------

    async def set_canary(
        self,
        name: str,
        alias: str,
        *,
        version: int,
        percent: float,
        sticky_key: str | None,
        actor: str | None,
        reason: str | None = None,
    ) -> _Record:
        """Start (or replace) the canary of ``alias``: ``percent`` of its traffic to
        ``version``.

        Returns the canary record plus ``alias_version`` and ``replaced`` (the canary
        it replaced, or None). ``NotFoundError`` for a missing alias or version;
        ``CanaryStateError`` when the alias already points at ``version``.
        """
        now = self._now()
        async with self._session() as session, session.begin():
            held = await self._alias_for_canary(session, name, alias)
            if held.version == version:
                raise CanaryStateError(
                    name=name,
                    alias=alias,
                    problem=f"it already points at version {version}, so a canary to it "
                    "would change nothing",
                    fix="canary a different version, or move the alias with "
                    "`datapunk models promote`",
                )
            if await session.get(ModelVersion, (name, version)) is None:
                raise NotFoundError(
                    kind=f"version of model {name!r}", name=str(version), fix="register it first"
                )
            row = await session.get(ModelCanary, (name, alias))
            replaced = None if row is None else canary_record(row)
            if row is None:
                row = ModelCanary(name=name, alias=alias)
                session.add(row)
            row.version, row.percent, row.sticky_key = version, float(percent), sticky_key
            row.created_at, row.created_by = now, actor
            action: CanaryAction = "start" if replaced is None else "replace"
            self._record(session, row, action, held.version, actor, reason, now)
        return {**canary_record(row), "alias_version": held.version, "replaced": replaced}

    async def clear_canary(
        self, name: str, alias: str, *, actor: str | None, reason: str | None = None
    ) -> _Record | None:
        """Remove the canary of ``alias`` (a rollback: all traffic to the alias's version).

        Returns the removed canary, or None when there was none (nothing recorded).
        """
        now = self._now()
        async with self._session() as session, session.begin():
            held = await self._lock_alias(session, name, alias)
            row = await session.get(ModelCanary, (name, alias))
            if row is None:
                return None
            removed = canary_record(row)
            self._record(
                session, row, "rollback", None if held is None else held.version, actor, reason, now
            )
            await session.delete(row)
        return removed

    async def promote_canary(
        self, name: str, alias: str, *, actor: str, reason: str | None = None
    ) -> _Record:
        """Move ``alias`` to its canary's version (recorded in the alias history) and
        remove the canary, in one transaction.

        Returns the alias record plus ``previous_version`` and ``canary`` (the removed
        canary). ``NotFoundError`` when the alias or its canary does not exist.
        """
        now = self._now()
        async with self._session() as session, session.begin():
            held = await self._alias_for_canary(session, name, alias)
            row = await session.get(ModelCanary, (name, alias))
            if row is None:
                raise NotFoundError(
                    kind=f"canary of alias {alias!r} of model {name!r}",
                    name=alias,
                    fix="start one with `datapunk models canary NAME VERSION --percent P`",
                )
            canary, previous = canary_record(row), held.version
            why = reason or f"promoted the canary ({row.percent:g}% to version {row.version})"
            self._record(session, row, "promote", previous, actor, reason, now)
            await session.delete(row)
            await session.flush()  # gone before the move, which would otherwise "stop" it
            moved = await self._move_alias(
                session, held, name, alias, canary["version"], actor, why, now
            )
            record = {
                "name": moved.name,
                "alias": moved.alias,
                "version": moved.version,
                "updated_at": moved.updated_at.isoformat(),
                "updated_by": moved.updated_by,
            }
        return {**record, "previous_version": previous, "canary": canary}

    # ---- used by RegistryStore's alias moves -----------------------------------------

    async def _stop_canary_on(
        self,
        session: AsyncSession,
        name: str,
        alias: str,
        version: int,
        from_version: int | None,
        actor: str,
        now: datetime,
    ) -> None:
        """The alias moves to ``version``: a canary to that same version has nothing left
        to split, so it ends (``stop``) in the move's transaction."""
        row = await session.get(ModelCanary, (name, alias))
        if row is not None and row.version == version:
            reason = f"alias moved onto the canary's version {version}"
            self._record(session, row, "stop", from_version, actor, reason, now)
            await session.delete(row)

    async def _refuse_removal_with_canary(
        self, session: AsyncSession, name: str, alias: str
    ) -> None:
        """An alias with a canary is not removed: the canary would lose what it splits."""
        row = await session.get(ModelCanary, (name, alias))
        if row is not None:
            raise CanaryStateError(
                name=name,
                alias=alias,
                problem=f"it has {_describe(row)}",
                fix=f"roll it back (`datapunk models rollback {name} --alias {alias}`) or "
                "promote it before removing the alias",
            )

    # ---- internals -----------------------------------------------------------------

    async def _alias_for_canary(self, session: AsyncSession, name: str, alias: str) -> ModelAlias:
        held = await self._lock_alias(session, name, alias)
        if held is None:
            known = sorted(await self._aliases_of(session, name))
            raise NotFoundError(
                kind=f"alias of model {name!r}",
                name=alias,
                fix=f"aliases: {', '.join(known) or 'none'}; a canary splits an alias's "
                "traffic, so point the alias at a version first (`datapunk models promote "
                f"{name} --version V --alias {alias} --force`)",
            )
        return held

    @staticmethod
    def _record(
        session: AsyncSession,
        row: ModelCanary,
        action: CanaryAction,
        alias_version: int | None,
        actor: str | None,
        reason: str | None,
        now: datetime,
    ) -> None:
        session.add(
            ModelCanaryEvent(
                name=row.name,
                alias=row.alias,
                action=action,
                version=row.version,
                percent=row.percent,
                sticky_key=row.sticky_key,
                alias_version=alias_version,
                actor=actor,
                reason=reason,
                at=now,
            )
        )
