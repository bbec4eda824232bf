"""Compose the gateway's identities from settings: API keys beside users' tokens.

One function, so the Serve deployment, tests and benchmarks wire accounts, sessions,
token signing and revocation the same way.
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import datetime

from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from cluster.cache.port import Cache
from cluster.security.accounts import AccountService, LockoutPolicy
from cluster.security.grant_store import load_grants
from cluster.security.grants import Grant
from cluster.security.passwords import HashParameters, Passwords
from cluster.security.principal import Authenticator
from cluster.security.session_store import SessionStore
from cluster.security.sessions import (
    BearerAuthenticator,
    RevokedSessions,
    SessionService,
    TokenAuthenticator,
)
from cluster.security.tokens import signer_from_settings
from cluster.security.user_store import UserStore
from cluster.settings import Settings
from serve_apps.gateway.routes_auth import AuthBackend


def build_identity(
    settings: Settings,
    sessions: async_sessionmaker[AsyncSession],
    cache: Cache,
    keys: Authenticator,
    *,
    utcnow: Callable[[], datetime],
    monotonic: Callable[[], float],
) -> tuple[BearerAuthenticator, AuthBackend]:
    """The gateway's authenticator (``keys`` for API keys, tokens for users) and the
    backend of the auth and users routes.

    Creates the token signing key file on first use when settings name no key.
    """
    session_store = SessionStore(sessions, utcnow)
    accounts = AccountService(
        UserStore(sessions, utcnow),
        session_store,
        Passwords(HashParameters.from_settings(settings)),
        utcnow,
        lockout=LockoutPolicy.from_settings(settings),
        issuer=settings.auth.issuer,
    )
    signer = signer_from_settings(settings, utcnow)
    revoked = RevokedSessions(
        cache,
        session_store,
        ttl_s=settings.auth.access_token_ttl_s,
        recheck_s=settings.gateway.auth_cache_ttl_s,
        monotonic=monotonic,
        utcnow=utcnow,
    )
    service = SessionService(accounts, session_store, signer, revoked, utcnow)

    async def user_grants(user_id: str) -> tuple[Grant, ...]:
        async with sessions() as session:
            return await load_grants(session, user_id, "user")

    tokens = TokenAuthenticator(
        signer,
        revoked,
        user_grants,
        grants_ttl_s=settings.gateway.auth_cache_ttl_s,
        monotonic=monotonic,
    )
    authenticator = BearerAuthenticator(keys=keys, tokens=tokens)
    return authenticator, AuthBackend(accounts=accounts, sessions=service, now=utcnow)
