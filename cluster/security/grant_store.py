"""Scoped grants on the platform database: ``key_grants`` and ``user_grants``.

The rules live in ``cluster.security.grants``; this module stores them. A grant is
checked when it is written (a known permission the subject's role has, a scope that fits
it), and again when it is read: a stored row that no longer parses fails the subject's
authentication rather than being skipped, because dropping a key's last grant would
silently widen it to its whole role.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass
from datetime import datetime
from typing import Any, ClassVar, Literal

from sqlalchemy import delete, select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from cluster.db.models import ApiKey, KeyGrant, User, UserGrant
from cluster.db.store import PlatformStore
from cluster.errors import AuthenticationError, InvalidInputError, NotFoundError
from cluster.security.grants import Grant, make_grant
from cluster.security.rbac import Role, permissions_of

Subject = Literal["key", "user"]
_MODELS: dict[Subject, Any] = {"key": KeyGrant, "user": UserGrant}
_SUBJECTS: dict[Subject, Any] = {"key": ApiKey, "user": User}
_LISTING: dict[Subject, str] = {"key": "`datapunk keys ls --all`", "user": "`datapunk users ls`"}


@dataclass(frozen=True, slots=True)
class GrantRecord:
    """A stored grant: whose, what, when and by whom."""

    subject: str
    grant: Grant
    created_at: datetime
    created_by: str | None

    def as_dict(self) -> dict[str, Any]:
        return {
            **self.grant.as_dict(),
            "created_at": self.created_at.isoformat(),
            "created_by": self.created_by,
        }


_Records = list[GrantRecord]


def _subject_column(kind: Subject) -> Any:
    return KeyGrant.key_id if kind == "key" else UserGrant.user_id


def _stored_grant(subject_id: str, permission: str, scope: str) -> Grant:
    try:
        return make_grant(permission, scope)
    except InvalidInputError as exc:
        raise AuthenticationError(
            f"{subject_id} has a stored grant that is no longer valid ({permission} on "
            f"{scope}: {exc.message}); it is refused until an admin fixes its grants "
            f"(`datapunk grants ls {subject_id}`)",
            reason="bad_grant",
            key_id=subject_id,
        ) from None


async def load_grants(
    session: AsyncSession, subject_id: str, kind: Subject = "key"
) -> tuple[Grant, ...]:
    """The grants of ``subject_id``, sorted; ``AuthenticationError`` if one is invalid."""
    model = _MODELS[kind]
    column = _subject_column(kind)
    rows = (await session.execute(select(model).where(column == subject_id))).scalars().all()
    return tuple(sorted(_stored_grant(subject_id, r.permission, r.scope) for r in rows))


async def copy_key_grants(session: AsyncSession, old_key_id: str, new_key_id: str) -> None:
    """A rotation hook (``KeyStore(on_rotate=...)``): the successor gets the same grants.

    Copied, not moved: the old key keeps working during the overlap, and without its
    grants it would have its whole role.
    """
    rows = (
        (await session.execute(select(KeyGrant).where(KeyGrant.key_id == old_key_id)))
        .scalars()
        .all()
    )
    for row in rows:
        session.add(
            KeyGrant(
                key_id=new_key_id,
                permission=row.permission,
                scope=row.scope,
                created_at=row.created_at,
                created_by=row.created_by,
            )
        )


class GrantStore(PlatformStore):
    """List, add, remove and replace the grants of API keys (``UserGrantStore``: users)."""

    kind: ClassVar[Subject] = "key"
    table_name = KeyGrant.__tablename__

    def __init__(
        self, session_factory: async_sessionmaker[AsyncSession], now: Callable[[], datetime]
    ) -> None:
        super().__init__(session_factory, now)
        self._model = _MODELS[self.kind]

    async def _role(self, session: AsyncSession, subject_id: str) -> Role:
        subject = await session.get(_SUBJECTS[self.kind], subject_id)
        if subject is None:
            kind = "API key" if self.kind == "key" else "user"
            raise NotFoundError(
                kind=kind, name=subject_id, fix=f"list them with {_LISTING[self.kind]}"
            )
        return Role(subject.role)

    def _checked(self, role: Role, grant: Grant) -> Grant:
        if grant.permission not in permissions_of(role):
            raise InvalidInputError(
                field="permission",
                value=grant.permission.value,
                allowed=f"one the {self.kind}'s role {role.value!r} has "
                f"({', '.join(sorted(permissions_of(role)))}): grants narrow a role, "
                "they never add to it",
            )
        return grant

    def _row(self, subject_id: str, grant: Grant, created_by: str | None) -> Any:
        fields = {
            "permission": grant.permission.value,
            "scope": str(grant.scope),
            "created_at": self._now(),
            "created_by": created_by,
        }
        if self.kind == "key":
            return KeyGrant(key_id=subject_id, **fields)
        return UserGrant(user_id=subject_id, **fields)

    def _record(self, subject_id: str, row: Any) -> GrantRecord:
        grant = _stored_grant(subject_id, row.permission, row.scope)
        return GrantRecord(subject_id, grant, row.created_at, row.created_by)

    async def _rows(self, session: AsyncSession, subject_id: str) -> list[Any]:
        column = _subject_column(self.kind)
        query = select(self._model).where(column == subject_id)
        return list((await session.execute(query)).scalars().all())

    async def list(self, subject_id: str) -> _Records:
        """The subject's grants, sorted by permission then scope (empty: unrestricted)."""
        async with self._session() as session:
            await self._role(session, subject_id)
            rows = await self._rows(session, subject_id)
        return sorted((self._record(subject_id, r) for r in rows), key=lambda r: r.grant)

    async def add(
        self, subject_id: str, permission: str, scope: str, created_by: str | None = None
    ) -> GrantRecord:
        """Add one grant (adding it again changes nothing); 404 for an unknown subject."""
        grant = make_grant(permission, scope)
        key = (subject_id, grant.permission.value, str(grant.scope))
        try:
            async with self._session() as session, session.begin():
                self._checked(await self._role(session, subject_id), grant)
                row = await session.get(self._model, key)
                if row is None:
                    row = self._row(subject_id, grant, created_by)
                    session.add(row)
        except IntegrityError:  # added concurrently: it is there, which is what was asked
            async with self._session() as session:
                row = await session.get(self._model, key)
        return self._record(subject_id, row)

    async def remove(self, subject_id: str, permission: str, scope: str) -> GrantRecord:
        """Remove one grant; ``NotFoundError`` when the subject has no such grant."""
        grant = make_grant(permission, scope)
        key = (subject_id, grant.permission.value, str(grant.scope))
        async with self._session() as session, session.begin():
            await self._role(session, subject_id)
            row = await session.get(self._model, key)
            if row is None:
                raise NotFoundError(
                    kind="grant",
                    name=f"{grant} of {subject_id}",
                    fix=f"list them with `datapunk grants ls {subject_id}`",
                )
            record = self._record(subject_id, row)
            await session.delete(row)
        return record

    async def replace(
        self, subject_id: str, grants: Iterable[Grant], created_by: str | None = None
    ) -> _Records:
        """Make ``grants`` the subject's whole set, in one transaction (empty: none)."""
        wanted = sorted(set(grants))
        async with self._session() as session, session.begin():
            role = await self._role(session, subject_id)
            for grant in wanted:
                self._checked(role, grant)
            column = _subject_column(self.kind)
            await session.execute(delete(self._model).where(column == subject_id))
            rows = [self._row(subject_id, g, created_by) for g in wanted]
            session.add_all(rows)
        return [self._record(subject_id, r) for r in rows]


class UserGrantStore(GrantStore):
    """The grants of human accounts (``user_grants``): the same rules as a key's."""

    kind: ClassVar[Subject] = "user"
    table_name = UserGrant.__tablename__
