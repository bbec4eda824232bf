"""Human accounts on the platform database: ``users`` and ``user_recovery_codes``.

Storage only: the rules (password policy, lockout, MFA) live in
``cluster.security.accounts``. Every change that must not race (a failed-login
count, a TOTP step, a recovery code) is one conditional ``UPDATE``, so two gateway
replicas handling the same account at once cannot both win.
"""

from __future__ import annotations

import secrets
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any, Literal, cast

from sqlalchemy import CursorResult, delete, func, select, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from cluster.db.models import User, UserRecoveryCode
from cluster.db.store import PlatformStore
from cluster.errors import NotFoundError, PlatformStateError
from cluster.security.rbac import Role

UserStatus = Literal["active", "locked", "disabled"]
MfaState = Literal["off", "pending", "on"]


def _new_user_id() -> str:
    return "usr_" + secrets.token_hex(6)


@dataclass(frozen=True, slots=True)
class UserRecord:
    """What may be shown about an account: no hash, no TOTP seed."""

    id: str
    username: str
    role: Role
    created_at: datetime
    created_by: str | None
    disabled_at: datetime | None
    failed_logins: int
    locked_until: datetime | None
    last_login_at: datetime | None
    mfa: MfaState
    mfa_enabled_at: datetime | None

    def status(self, now: datetime) -> UserStatus:
        """``disabled`` wins; ``locked`` until ``locked_until``; else ``active``."""
        if self.disabled_at is not None:
            return "disabled"
        if self.locked_until is not None and self.locked_until > now:
            return "locked"
        return "active"


@dataclass(frozen=True, slots=True)
class StoredUser:
    """An account with its secrets, for the sign-in code only (never serialised)."""

    record: UserRecord
    password_hash: str
    mfa_secret: str | None
    last_totp_step: int | None

    def __repr__(self) -> str:
        return f"StoredUser({self.record!r})"


def _mfa_state(row: User) -> MfaState:
    if row.mfa_enabled_at is not None:
        return "on"
    return "pending" if row.mfa_secret is not None else "off"


def _record(row: User) -> UserRecord:
    return UserRecord(
        id=row.id,
        username=row.username,
        role=Role(row.role),
        created_at=row.created_at,
        created_by=row.created_by,
        disabled_at=row.disabled_at,
        failed_logins=row.failed_logins,
        locked_until=row.locked_until,
        last_login_at=row.last_login_at,
        mfa=_mfa_state(row),
        mfa_enabled_at=row.mfa_enabled_at,
    )


def _stored(row: User) -> StoredUser:
    return StoredUser(_record(row), row.password_hash, row.mfa_secret, row.last_totp_step)


def _rowcount(result: Any) -> int:
    return cast("CursorResult[Any]", result).rowcount


def _no_such_user(username: str) -> NotFoundError:
    return NotFoundError(kind="user", name=username, fix="list users with `datapunk users ls`")


class UserStore(PlatformStore):
    """Accounts and recovery codes; ``now`` (aware UTC) is the only clock it reads."""

    table_name = User.__tablename__

    def __init__(
        self, session_factory: async_sessionmaker[AsyncSession], now: Callable[[], datetime]
    ) -> None:
        super().__init__(session_factory, now)

    async def create(
        self, username: str, role: Role, password_hash: str, created_by: str | None
    ) -> UserRecord:
        """Add an account; ``PlatformStateError`` when the username is taken."""
        row = User(
            id=_new_user_id(),
            username=username,
            role=role.value,
            password_hash=password_hash,
            created_at=self._now(),
            created_by=created_by,
            failed_logins=0,
        )
        try:
            async with self._session() as session, session.begin():
                session.add(row)
        except IntegrityError:
            raise PlatformStateError(
                f"user {username!r} already exists; pick another username or see "
                "`datapunk users ls`",
                username=username,
            ) from None
        return _record(row)

    async def find(self, username: str) -> StoredUser | None:
        """The account named ``username`` with its secrets, or None."""
        async with self._session() as session:
            row = await session.scalar(select(User).where(User.username == username))
        return None if row is None else _stored(row)

    async def get(self, user_id: str) -> StoredUser | None:
        """The account with id ``user_id`` with its secrets, or None."""
        async with self._session() as session:
            row = await session.get(User, user_id)
        return None if row is None else _stored(row)

    async def list(self) -> list[UserRecord]:
        """Every account, oldest first."""
        async with self._session() as session:
            rows = (await session.scalars(select(User).order_by(User.created_at, User.id))).all()
        return [_record(row) for row in rows]

    # ---- sign-in bookkeeping ---------------------------------------------------------

    async def record_failure(
        self, user_id: str, threshold: int, lock_for: timedelta
    ) -> datetime | None:
        """Count a failed sign-in; at ``threshold`` lock until now + ``lock_for`` and
        return that time (the count starts again after the lock), else None."""
        now = self._now()
        async with self._session() as session, session.begin():
            count = await session.scalar(
                update(User)
                .where(User.id == user_id)
                .values(failed_logins=User.failed_logins + 1)
                .returning(User.failed_logins)
            )
            if count is None or count < threshold:
                return None
            until = now + lock_for
            await session.execute(
                update(User).where(User.id == user_id).values(failed_logins=0, locked_until=until)
            )
        return until

    async def record_success(self, user_id: str, new_hash: str | None = None) -> None:
        """Reset the failure count, stamp the sign-in, store a rehashed password."""
        values: dict[str, Any] = {
            "failed_logins": 0,
            "locked_until": None,
            "last_login_at": self._now(),
        }
        if new_hash is not None:
            values["password_hash"] = new_hash
        async with self._session() as session, session.begin():
            await session.execute(update(User).where(User.id == user_id).values(**values))

    # ---- administration --------------------------------------------------------------

    async def set_disabled(self, username: str, disabled: bool) -> UserRecord:
        """Disable (or re-enable) ``username``; disabling twice keeps the first time."""
        async with self._session() as session, session.begin():
            row = await session.scalar(select(User).where(User.username == username))
            if row is None:
                raise _no_such_user(username)
            if not disabled:
                row.disabled_at = None
            elif row.disabled_at is None:
                row.disabled_at = self._now()
        return _record(row)

    async def unlock(self, username: str) -> UserRecord:
        """Lift a lockout and reset the failure count."""
        async with self._session() as session, session.begin():
            row = await session.scalar(select(User).where(User.username == username))
            if row is None:
                raise _no_such_user(username)
            row.locked_until = None
            row.failed_logins = 0
        return _record(row)

    async def set_password(self, username: str, password_hash: str) -> UserRecord:
        """Replace the password hash (an admin reset) and lift any lockout."""
        async with self._session() as session, session.begin():
            row = await session.scalar(select(User).where(User.username == username))
            if row is None:
                raise _no_such_user(username)
            row.password_hash = password_hash
            row.locked_until = None
            row.failed_logins = 0
        return _record(row)

    # ---- multi-factor ----------------------------------------------------------------

    async def start_mfa(self, user_id: str, secret: str, code_digests: Sequence[str]) -> None:
        """Store a pending TOTP seed and fresh recovery codes (replacing earlier ones).

        ``PlatformStateError`` when MFA is already on: turning it off is an admin's
        ``reset-mfa``, so a stolen session cannot swap the second factor.
        """
        now = self._now()
        async with self._session() as session, session.begin():
            changed = await session.execute(
                update(User)
                .where(User.id == user_id, User.mfa_enabled_at.is_(None))
                .values(mfa_secret=secret, last_totp_step=None)
            )
            if _rowcount(changed) != 1:
                raise PlatformStateError(
                    "multi-factor authentication is already on for this account; an admin "
                    "can turn it off with `datapunk users reset-mfa USERNAME`",
                    user_id=user_id,
                )
            await session.execute(
                delete(UserRecoveryCode).where(UserRecoveryCode.user_id == user_id)
            )
            session.add_all(
                UserRecoveryCode(user_id=user_id, digest=d, created_at=now) for d in code_digests
            )

    async def enable_mfa(self, user_id: str, step: int) -> bool:
        """Turn a pending enrolment on, recording ``step`` as used; False if not pending."""
        async with self._session() as session, session.begin():
            changed = await session.execute(
                update(User)
                .where(
                    User.id == user_id,
                    User.mfa_secret.is_not(None),
                    User.mfa_enabled_at.is_(None),
                )
                .values(mfa_enabled_at=self._now(), last_totp_step=step)
            )
        return _rowcount(changed) == 1

    async def use_totp_step(self, user_id: str, step: int) -> bool:
        """Record ``step`` as used if it is newer than the last one; False on a replay."""
        async with self._session() as session, session.begin():
            changed = await session.execute(
                update(User)
                .where(
                    User.id == user_id,
                    (User.last_totp_step.is_(None)) | (User.last_totp_step < step),
                )
                .values(last_totp_step=step)
            )
        return _rowcount(changed) == 1

    async def use_recovery_code(self, user_id: str, digest: str) -> bool:
        """Spend the recovery code with ``digest``; False if unknown or already spent."""
        async with self._session() as session, session.begin():
            changed = await session.execute(
                update(UserRecoveryCode)
                .where(
                    UserRecoveryCode.user_id == user_id,
                    UserRecoveryCode.digest == digest,
                    UserRecoveryCode.used_at.is_(None),
                )
                .values(used_at=self._now())
            )
        return _rowcount(changed) == 1

    async def recovery_codes_left(self, user_id: str) -> int:
        """Unspent recovery codes of ``user_id``."""
        async with self._session() as session:
            count = await session.scalar(
                select(func.count())
                .select_from(UserRecoveryCode)
                .where(UserRecoveryCode.user_id == user_id, UserRecoveryCode.used_at.is_(None))
            )
        return int(count or 0)

    async def reset_mfa(self, username: str) -> UserRecord:
        """Turn MFA off and drop the seed and recovery codes (the user enrols again)."""
        async with self._session() as session, session.begin():
            row = await session.scalar(select(User).where(User.username == username))
            if row is None:
                raise _no_such_user(username)
            row.mfa_secret = None
            row.mfa_enabled_at = None
            row.last_totp_step = None
            await session.execute(
                delete(UserRecoveryCode).where(UserRecoveryCode.user_id == row.id)
            )
        return _record(row)
