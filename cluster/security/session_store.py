"""Signed-in sessions on the platform database (``auth_sessions``).

A session is what a sign-in creates and a logout ends. Its tokens carry its id
(``sid``); the row holds the id (``jti``) of the one refresh token that may be used
next. Moving that id forward is a conditional ``UPDATE`` (compare-and-set), so of two
refreshes with the same token exactly one succeeds and the other is seen as a reuse.
"""

from __future__ import annotations

import secrets
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from typing import Any, cast

from sqlalchemy import CursorResult, select, update
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from cluster.db.models import AuthSession
from cluster.db.store import PlatformStore

MAX_REASON_LENGTH = 100


def new_session_id() -> str:
    """A random session id (``ses_`` + 96 bits)."""
    return "ses_" + secrets.token_hex(12)


@dataclass(frozen=True, slots=True)
class SessionRecord:
    """One session; ``refresh_jti`` is internal (it lets the holder of a token refresh)."""

    id: str
    user_id: str
    refresh_jti: str
    created_at: datetime
    refreshed_at: datetime
    expires_at: datetime
    revoked_at: datetime | None
    revoked_reason: str | None

    def active(self, now: datetime) -> bool:
        """Neither revoked nor past its expiry."""
        return self.revoked_at is None and self.expires_at > now


def _record(row: AuthSession) -> SessionRecord:
    return SessionRecord(
        id=row.id,
        user_id=row.user_id,
        refresh_jti=row.refresh_jti,
        created_at=row.created_at,
        refreshed_at=row.refreshed_at,
        expires_at=row.expires_at,
        revoked_at=row.revoked_at,
        revoked_reason=row.revoked_reason,
    )


class SessionStore(PlatformStore):
    """Create, read, advance and revoke sessions; ``now`` is its only clock."""

    table_name = AuthSession.__tablename__

    def __init__(
        self, session_factory: async_sessionmaker[AsyncSession], now: Callable[[], datetime]
    ) -> None:
        super().__init__(session_factory, now)

    async def create(
        self, session_id: str, user_id: str, refresh_jti: str, expires_at: datetime
    ) -> SessionRecord:
        """Record a new session whose first refresh token is ``refresh_jti``."""
        now = self._now()
        row = AuthSession(
            id=session_id,
            user_id=user_id,
            refresh_jti=refresh_jti,
            created_at=now,
            refreshed_at=now,
            expires_at=expires_at,
        )
        async with self._session() as session, session.begin():
            session.add(row)
        return _record(row)

    async def get(self, session_id: str) -> SessionRecord | None:
        """The session ``session_id``, or None."""
        async with self._session() as session:
            row = await session.get(AuthSession, session_id)
        return None if row is None else _record(row)

    async def advance(
        self, session_id: str, old_jti: str, new_jti: str, expires_at: datetime
    ) -> bool:
        """Replace the valid refresh token ``old_jti`` by ``new_jti``; False when
        ``old_jti`` is not the current one (a reuse) or the session was revoked."""
        async with self._session() as session, session.begin():
            changed = await session.execute(
                update(AuthSession)
                .where(
                    AuthSession.id == session_id,
                    AuthSession.refresh_jti == old_jti,
                    AuthSession.revoked_at.is_(None),
                )
                .values(refresh_jti=new_jti, refreshed_at=self._now(), expires_at=expires_at)
            )
        return cast("CursorResult[Any]", changed).rowcount == 1

    async def revoke(self, session_id: str, reason: str) -> bool:
        """End the session (again is a no-op keeping the first reason); True if it ended now."""
        async with self._session() as session, session.begin():
            changed = await session.execute(
                update(AuthSession)
                .where(AuthSession.id == session_id, AuthSession.revoked_at.is_(None))
                .values(revoked_at=self._now(), revoked_reason=reason[:MAX_REASON_LENGTH])
            )
        return cast("CursorResult[Any]", changed).rowcount == 1

    async def revoke_user(self, user_id: str, reason: str) -> list[str]:
        """End every open session of ``user_id``; the ids of those that ended now."""
        now = self._now()
        async with self._session() as session, session.begin():
            ids = list(
                (
                    await session.scalars(
                        select(AuthSession.id).where(
                            AuthSession.user_id == user_id, AuthSession.revoked_at.is_(None)
                        )
                    )
                ).all()
            )
            if ids:
                await session.execute(
                    update(AuthSession)
                    .where(AuthSession.id.in_(ids), AuthSession.revoked_at.is_(None))
                    .values(revoked_at=now, revoked_reason=reason[:MAX_REASON_LENGTH])
                )
        return ids
