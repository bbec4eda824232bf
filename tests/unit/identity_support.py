"""What identity tests share: the gateway built with accounts, sessions and API keys on a
SQLite platform DB, cheap argon2 parameters, and helpers to sign in."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
from fastapi import FastAPI

from cluster.cache import Cache, MemoryCache, build_cache
from cluster.db.engine import create_engine, session_factory
from cluster.db.migrate import upgrade
from cluster.security import totp
from cluster.security.auth_cache import CachedAuthenticator
from cluster.security.keys import KeyStore
from cluster.security.rbac import Role
from cluster.security.sessions import BearerAuthenticator
from cluster.security.user_store import UserRecord
from cluster.settings import Settings
from serve_apps.gateway.asgi import GatewayDeps, create_app
from serve_apps.gateway.identity import build_identity
from serve_apps.gateway.routes_auth import AuthBackend
from tests.clock import FakeClock

# The smallest argon2id cost argon2-cffi accepts: tests check behaviour, not hardness.
CHEAP_ARGON2 = {"argon2_time_cost": 1, "argon2_memory_kib": 1024, "argon2_parallelism": 1}
PASSWORD = "correct horse battery staple"


def identity_settings(data_dir: Path, **auth: Any) -> Settings:
    """Settings on ``data_dir`` with cheap hashing and ``auth`` overrides."""
    return Settings(data_dir=data_dir, auth={**CHEAP_ARGON2, **auth})


@dataclass
class Identity:
    """A migrated platform DB with key store, accounts and sessions on a fake clock."""

    settings: Settings
    clock: FakeClock
    keys: KeyStore
    key_cache: CachedAuthenticator
    cache: Cache
    authenticator: BearerAuthenticator
    backend: AuthBackend

    def app(self) -> FastAPI:
        """The gateway app as the Serve deployment builds it (no Ray)."""
        deps = GatewayDeps(
            authenticator=self.authenticator,
            readiness={},
            key_store=self.keys,
            forget_key=self.key_cache.invalidate,
            auth=self.backend,
        )
        return create_app(deps)

    async def user(
        self, username: str = "alice", role: Role | str = Role.ENGINEER, password: str = PASSWORD
    ) -> UserRecord:
        return await self.backend.accounts.create_user(username, password, role, "test")

    def code(self, secret: str) -> str:
        """The TOTP code an authenticator app shows now."""
        return totp.code_at(secret, self.clock.now())

    def next_step(self) -> None:
        """Move the clock to the next TOTP step (a fresh code)."""
        self.clock.advance(totp.STEP_S)


@asynccontextmanager
async def identity(settings: Settings, clock: FakeClock | None = None) -> AsyncIterator[Identity]:
    """An ``Identity`` on ``settings``' platform database, migrated to head first."""
    clock = clock or FakeClock()
    await upgrade(settings)
    engine = create_engine(settings)
    sessions = session_factory(engine)
    keys = KeyStore(sessions, clock.now)
    key_cache = CachedAuthenticator(keys, ttl_s=5.0, now=clock.monotonic, utcnow=clock.now)
    # Redis when the settings name one (production mode), else the in-process cache on
    # the fake clock.
    cache = build_cache(settings) if settings.redis_url else MemoryCache(now=clock.monotonic)
    authenticator, backend = build_identity(
        settings, sessions, cache, key_cache, utcnow=clock.now, monotonic=clock.monotonic
    )
    try:
        yield Identity(settings, clock, keys, key_cache, cache, authenticator, backend)
    finally:
        await cache.close()
        await engine.dispose()


def client(app: FastAPI) -> httpx.AsyncClient:
    return httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://t")


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}
