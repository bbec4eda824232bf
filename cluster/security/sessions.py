"""Sessions of signed-in users: login, refresh with reuse detection, logout, and the
gateway's authenticator for access tokens (beside API keys).

Refresh tokens are single use. Each refresh issues a new pair and moves the session's
one valid refresh ``jti`` forward; a refresh token of the session that is not the
current one was used before, which means it leaked (or a client raced itself), and
the whole session is ended: the thief's copy and the owner's stop working together
(OAuth 2.0 Security BCP, refresh token rotation).

Access tokens are verified without the database, then their ``sid`` is checked
against revoked sessions (``RevokedSessions``): a logout takes effect at once on the
replica that handled it, at once everywhere with Redis (the shared cache), and within
``recheck_s`` on the others otherwise (the database is re-read per session that often).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from cluster.cache.port import Cache
from cluster.security.accounts import AccountService
from cluster.security.auth_cache import TtlLru
from cluster.security.auth_errors import TokenError
from cluster.security.grants import Grant
from cluster.security.principal import Authenticator, Principal
from cluster.security.session_store import SessionRecord, SessionStore, new_session_id
from cluster.security.tokens import TokenClaims, TokenSigner, looks_like_jwt
from cluster.security.user_store import UserRecord

logger = logging.getLogger(__name__)
REVOKED_PREFIX = "auth:revoked-sid:"
DEFAULT_MAX_ENTRIES = 10_000


def _stamp(when: datetime | None) -> str:
    return when.isoformat(timespec="seconds") if when else "?"


@dataclass(frozen=True, slots=True)
class TokenPair:
    """What a login or refresh hands back; the tokens are shown to the client only."""

    access_token: str
    refresh_token: str
    access: TokenClaims
    refresh: TokenClaims

    def __repr__(self) -> str:
        return f"TokenPair(session_id={self.access.session_id!r})"

    def to_dict(self) -> dict[str, Any]:
        """The OAuth-style response body (lifetimes in seconds)."""
        return {
            "access_token": self.access_token,
            "refresh_token": self.refresh_token,
            "token_type": "bearer",
            "expires_in": _seconds(self.access),
            "refresh_expires_in": _seconds(self.refresh),
            "session_id": self.access.session_id,
        }


def _seconds(claims: TokenClaims) -> int:
    return int((claims.expires_at - claims.issued_at).total_seconds())


class RevokedSessions:
    """Answers "has session ``sid`` ended?" for every request with an access token.

    A revoked sid is written to ``cache`` (shared through Redis in production) for
    ``ttl_s``, the access-token lifetime: after that every access token of the session
    has expired anyway. A sid found open in the database is trusted for ``recheck_s``
    on this replica before it is read again.
    """

    def __init__(
        self,
        cache: Cache,
        store: SessionStore,
        *,
        ttl_s: float,
        recheck_s: float,
        monotonic: Callable[[], float],
        utcnow: Callable[[], datetime],
        max_entries: int = DEFAULT_MAX_ENTRIES,
    ) -> None:
        self._cache = cache
        self._store = store
        self._ttl = ttl_s
        self._recheck = recheck_s
        self._monotonic = monotonic
        self._utcnow = utcnow
        self._open: TtlLru[bool] = TtlLru(max_entries)
        self._ended: TtlLru[str] = TtlLru(max_entries)

    async def mark(self, session_id: str, reason: str) -> None:
        """Remember that ``session_id`` ended (after revoking it in the database)."""
        self._open.discard(session_id)
        self._ended.put(session_id, reason, self._monotonic() + self._ttl)
        await self._cache.set(REVOKED_PREFIX + session_id, reason.encode(), self._ttl)

    async def check(self, session_id: str) -> None:
        """Return if the session is open; raise ``TokenError`` if it ended."""
        now = self._monotonic()
        reason = self._ended.get(session_id, now)
        if reason is None:
            stored = await self._cache.get(REVOKED_PREFIX + session_id)
            reason = None if stored is None else stored.decode(errors="replace")
        if reason is None:
            if self._open.get(session_id, now):
                return
            record = await self._store.get(session_id)
            if record is not None and record.active(self._utcnow()):
                if self._recheck > 0:
                    self._open.put(session_id, True, now + self._recheck)
                return
            reason = _why_closed(record)
            self._ended.put(session_id, reason, now + self._ttl)
        raise TokenError(
            f"session {session_id} has ended ({reason}); log in again at POST /api/v1/auth/login",
            reason="revoked",
            session_id=session_id,
        )


def _why_closed(record: SessionRecord | None) -> str:
    if record is None:
        return "unknown session"
    if record.revoked_at is not None:
        return f"{record.revoked_reason or 'revoked'} at {_stamp(record.revoked_at)}"
    return f"expired at {_stamp(record.expires_at)}"


# The grants of a user id (grant_store.load_grants over a session).
GrantLoader = Callable[[str], Awaitable[tuple[Grant, ...]]]


class TokenAuthenticator:
    """An ``Authenticator`` for users' access tokens: signature, expiry, open session."""

    def __init__(
        self,
        signer: TokenSigner,
        revoked: RevokedSessions,
        grants: GrantLoader | None = None,
        *,
        grants_ttl_s: float = 5.0,
        monotonic: Callable[[], float] = time.monotonic,
    ) -> None:
        self._signer = signer
        self._revoked = revoked
        self._grants = grants
        self._grants_ttl_s = grants_ttl_s
        self._monotonic = monotonic
        self._cached: dict[str, tuple[float, tuple[Grant, ...]]] = {}

    async def authenticate(self, token: str) -> Principal:
        """The user the access ``token`` identifies (``kind="user"``), with the user's
        grants (a user with grants is restricted to them, as a key is)."""
        claims = self._signer.verify(token, "access")
        await self._revoked.check(claims.session_id)
        assert claims.username is not None and claims.role is not None  # access tokens
        return Principal(
            key_id=claims.subject,
            name=claims.username,
            role=claims.role,
            expires_at=claims.expires_at,
            kind="user",
            grants=await self._grants_of(claims.subject),
        )

    async def _grants_of(self, user_id: str) -> tuple[Grant, ...]:
        """Grants are re-read at most every ``grants_ttl_s`` per user (a change reaches
        every replica within that), not on every request."""
        if self._grants is None:
            return ()
        now = self._monotonic()
        hit = self._cached.get(user_id)
        if hit is not None and now - hit[0] < self._grants_ttl_s:
            return hit[1]
        grants = await self._grants(user_id)
        if len(self._cached) > 10_000:
            self._cached.clear()
        self._cached[user_id] = (now, grants)
        return grants


class BearerAuthenticator:
    """The gateway's authenticator: a JWT goes to ``tokens``, anything else to ``keys``."""

    def __init__(self, keys: Authenticator, tokens: Authenticator) -> None:
        self.keys = keys
        self.tokens = tokens

    async def authenticate(self, token: str) -> Principal:
        """The caller ``token`` identifies, API key or user."""
        if looks_like_jwt(token):
            return await self.tokens.authenticate(token)
        return await self.keys.authenticate(token)


class SessionService:
    """Login, refresh and logout over accounts, sessions and the token signer."""

    def __init__(
        self,
        accounts: AccountService,
        sessions: SessionStore,
        signer: TokenSigner,
        revoked: RevokedSessions,
        now: Callable[[], datetime],
    ) -> None:
        self.accounts = accounts
        self._sessions = sessions
        self.signer = signer
        self.revoked = revoked
        self._now = now

    async def login(
        self,
        username: str,
        password: str,
        otp: str | None = None,
        recovery_code: str | None = None,
    ) -> TokenPair:
        """Check the credentials (see ``AccountService.verify_sign_in``); open a session."""
        user = await self.accounts.verify_sign_in(username, password, otp, recovery_code)
        session_id = new_session_id()
        refresh_token, refresh = self.signer.issue_refresh(subject=user.id, session_id=session_id)
        await self._sessions.create(session_id, user.id, refresh.token_id, refresh.expires_at)
        logger.info("signed in", extra={"user": user.username, "session": session_id})
        return self._pair(user, refresh_token, refresh)

    async def refresh(self, refresh_token: str) -> TokenPair:
        """A new token pair for a current refresh token; a reused one ends the session."""
        claims = self.signer.verify(refresh_token, "refresh")
        record = await self._sessions.get(claims.session_id)
        if record is None or record.revoked_at is not None:
            raise TokenError(
                f"session {claims.session_id} has ended ({_why_closed(record)}); log in again",
                reason="revoked",
            )
        if record.refresh_jti != claims.token_id:
            await self._reused(record)
        user = await self.accounts.user(record.user_id)
        if user.disabled_at is not None:
            await self.end(record.id, "account disabled")
            raise TokenError(f"account {user.username!r} is disabled", reason="disabled")
        new_token, new_claims = self.signer.issue_refresh(subject=user.id, session_id=record.id)
        advanced = await self._sessions.advance(
            record.id, claims.token_id, new_claims.token_id, new_claims.expires_at
        )
        if not advanced:  # another refresh with the same token won the race: a reuse
            await self._reused(record)
        return self._pair(user, new_token, new_claims)

    async def logout(self, access_token: str) -> str:
        """End the session of ``access_token`` (its refresh and access tokens); its id."""
        claims = self.signer.verify(access_token, "access")
        await self.end(claims.session_id, "logout")
        return claims.session_id

    async def end(self, session_id: str, reason: str) -> None:
        """Revoke ``session_id`` in the database and in the revocation cache."""
        await self._sessions.revoke(session_id, reason)
        await self.revoked.mark(session_id, reason)

    async def end_all(self, session_ids: list[str], reason: str) -> None:
        """Mark sessions already revoked in the database (a disabled user's) as ended."""
        for session_id in session_ids:
            await self.revoked.mark(session_id, reason)

    async def _reused(self, record: SessionRecord) -> None:
        await self.end(record.id, "refresh token reuse")
        logger.warning(
            "refresh token reuse: session ended",
            extra={"session": record.id, "user_id": record.user_id},
        )
        raise TokenError(
            "this refresh token was already used; the session has been ended for safety "
            "(a copy of the token may have leaked): log in again",
            reason="reused",
            session_id=record.id,
        )

    def _pair(self, user: UserRecord, refresh_token: str, refresh: TokenClaims) -> TokenPair:
        access_token, access = self.signer.issue_access(
            subject=user.id, username=user.username, role=user.role, session_id=refresh.session_id
        )
        return TokenPair(access_token, refresh_token, access, refresh)
