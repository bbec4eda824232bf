"""Human accounts: creation, the sign-in check (password, lockout, second factor), MFA
enrolment, and what an admin does (disable, unlock, reset MFA).

The rules live here; storage is ``UserStore``, tokens and sessions are
``cluster.security.sessions``. A sign-in is refused the same way for an unknown
username and a wrong password (same message, same argon2 cost), so the endpoint does
not tell which usernames exist. After ``threshold`` failures in a row (wrong password
or wrong second factor) the account is locked for ``duration``; while locked, even the
right password is refused without being checked, which is what stops a guesser.

Nothing here logs or puts in an error a password, a one-time code or a recovery code.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timedelta

from cluster.errors import InvalidInputError, NotFoundError, PlatformStateError
from cluster.security import totp
from cluster.security.auth_errors import (
    AccountDisabledError,
    AccountLockedError,
    InvalidCredentialsError,
    MfaRequiredError,
)
from cluster.security.passwords import Passwords, check_password, normalize_username
from cluster.security.rbac import Role, parse_role
from cluster.security.session_store import SessionStore
from cluster.security.user_store import StoredUser, UserRecord, UserStore
from cluster.settings import Settings

logger = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class LockoutPolicy:
    """``threshold`` failed sign-ins in a row lock an account for ``duration``."""

    threshold: int = 5
    duration: timedelta = timedelta(minutes=15)

    @classmethod
    def from_settings(cls, settings: Settings) -> LockoutPolicy:
        auth = settings.auth
        return cls(auth.lockout_threshold, timedelta(seconds=auth.lockout_duration_s))


class AccountService:
    """Accounts over ``UserStore`` (and ``SessionStore``, to end sessions on disable)."""

    def __init__(
        self,
        users: UserStore,
        sessions: SessionStore,
        passwords: Passwords,
        now: Callable[[], datetime],
        *,
        lockout: LockoutPolicy | None = None,
        issuer: str = "Datapunk",
    ) -> None:
        self.users = users
        self._sessions = sessions
        self._passwords = passwords
        self._now = now
        self._lockout = lockout or LockoutPolicy()
        self._issuer = issuer

    # ---- administration --------------------------------------------------------------

    async def create_user(
        self, username: str, password: str, role: Role | str, created_by: str | None = None
    ) -> UserRecord:
        """Add an account after checking the username, role and password policy."""
        name = normalize_username(username)
        parsed_role = parse_role(role)
        check_password(name, password)
        encoded = await self._passwords.hash(password)
        record = await self.users.create(name, parsed_role, encoded, created_by)
        logger.info("user created", extra={"user": name, "role": parsed_role.value})
        return record

    async def list_users(self) -> list[UserRecord]:
        """Every account, oldest first."""
        return await self.users.list()

    async def user(self, user_id: str) -> UserRecord:
        """The account ``user_id``; ``NotFoundError`` if it was removed."""
        stored = await self.users.get(user_id)
        if stored is None:
            raise NotFoundError(kind="user", name=user_id)
        return stored.record

    async def disable(self, username: str) -> tuple[UserRecord, list[str]]:
        """Disable the account and end its sessions; the ids of the sessions ended."""
        record = await self.users.set_disabled(normalize_username(username), True)
        ended = await self._sessions.revoke_user(record.id, "account disabled")
        logger.info("user disabled", extra={"user": record.username, "sessions": len(ended)})
        return record, ended

    async def enable(self, username: str) -> UserRecord:
        """Re-enable a disabled account (its old sessions stay ended)."""
        return await self.users.set_disabled(normalize_username(username), False)

    async def unlock(self, username: str) -> UserRecord:
        """Lift a lockout before it runs out."""
        record = await self.users.unlock(normalize_username(username))
        logger.info("user unlocked", extra={"user": record.username})
        return record

    async def reset_mfa(self, username: str) -> UserRecord:
        """Turn multi-factor authentication off (a lost phone); the user enrols again."""
        record = await self.users.reset_mfa(normalize_username(username))
        logger.info("user MFA reset", extra={"user": record.username})
        return record

    async def set_password(self, username: str, password: str) -> UserRecord:
        """An admin's password reset: checks the policy, lifts any lockout."""
        name = normalize_username(username)
        check_password(name, password)
        return await self.users.set_password(name, await self._passwords.hash(password))

    # ---- sign-in ---------------------------------------------------------------------

    async def verify_sign_in(
        self,
        username: str,
        password: str,
        otp: str | None = None,
        recovery_code: str | None = None,
    ) -> UserRecord:
        """The account these credentials open, or a typed refusal.

        ``InvalidCredentialsError`` (401) for an unknown user or a wrong password or
        code; ``AccountLockedError`` (423) while locked; ``AccountDisabledError``;
        ``MfaRequiredError`` when MFA is on and neither code was sent.
        """
        stored = await self._find(username)
        if stored is None:
            await self._passwords.waste_time(password)
            raise InvalidCredentialsError()
        record = stored.record
        if record.locked_until is not None and record.locked_until > self._now():
            raise AccountLockedError(username=record.username, until=record.locked_until)
        if not await self._passwords.verify(stored.password_hash, password):
            await self._failed(record, "wrong password")
        if record.disabled_at is not None:
            raise AccountDisabledError(username=record.username)
        if record.mfa == "on":
            await self._second_factor(stored, otp, recovery_code)
        rehash = self._passwords.needs_rehash(stored.password_hash)
        new_hash = await self._passwords.hash(password) if rehash else None
        await self.users.record_success(record.id, new_hash)
        return record

    async def _find(self, username: str) -> StoredUser | None:
        try:
            name = normalize_username(username)
        except InvalidInputError:
            return None
        return await self.users.find(name)

    async def _second_factor(
        self, stored: StoredUser, otp: str | None, recovery_code: str | None
    ) -> None:
        record = stored.record
        if not otp and not recovery_code:
            raise MfaRequiredError(username=record.username)
        if otp:
            secret = stored.mfa_secret or ""
            step = totp.matching_step(secret, otp, self._now(), stored.last_totp_step)
            if step is None or not await self.users.use_totp_step(record.id, step):
                await self._failed(record, "wrong or reused one-time code")
            return
        digest = totp.recovery_digest(recovery_code or "")
        if not await self.users.use_recovery_code(record.id, digest):
            await self._failed(record, "wrong or spent recovery code")
        logger.info("recovery code used", extra={"user": record.username})

    async def _failed(self, record: UserRecord, why: str) -> None:
        """Count the failure; raise the refusal (a lockout when this one locks)."""
        policy = self._lockout
        until = await self.users.record_failure(record.id, policy.threshold, policy.duration)
        logger.warning("sign-in refused", extra={"user": record.username, "why": why})
        if until is not None:
            logger.warning("account locked", extra={"user": record.username})
            raise AccountLockedError(username=record.username, until=until)
        if why == "wrong password":
            raise InvalidCredentialsError()
        raise InvalidCredentialsError(
            f"{why}: codes change every {totp.STEP_S} s and each works once; use the next "
            "code, or a recovery code"
        )

    # ---- multi-factor enrolment ------------------------------------------------------

    async def enroll_mfa(self, user_id: str) -> totp.Enrollment:
        """Start enrolment: a new seed and recovery codes; MFA is on after ``confirm_mfa``."""
        record = await self.user(user_id)
        enrollment = totp.enroll(record.username, self._issuer)
        digests = [totp.recovery_digest(code) for code in enrollment.recovery_codes]
        await self.users.start_mfa(record.id, enrollment.secret, digests)
        return enrollment

    async def confirm_mfa(self, user_id: str, otp: str) -> UserRecord:
        """Turn MFA on with the first code the app shows; that code is then used up."""
        stored = await self.users.get(user_id)
        if stored is None:
            raise NotFoundError(kind="user", name=user_id)
        if stored.record.mfa != "pending" or stored.mfa_secret is None:
            state = "already on" if stored.record.mfa == "on" else "not being enrolled"
            raise PlatformStateError(
                f"multi-factor authentication is {state} for {stored.record.username!r}; "
                "start with POST /api/v1/auth/mfa/enroll",
                user_id=user_id,
            )
        step = totp.matching_step(stored.mfa_secret, otp, self._now(), None)
        if step is None:
            raise InvalidInputError(
                field="otp",
                value="******",
                allowed="the 6-digit code the authenticator app shows now (check its clock)",
            )
        if not await self.users.enable_mfa(user_id, step):
            raise PlatformStateError(
                "the enrolment changed meanwhile; enrol again", user_id=user_id
            )
        return await self.user(user_id)
