"""What gateway tests share: a real KeyStore on a SQLite platform DB, an ASGI client, the
one error-body check."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import httpx
from fastapi import FastAPI

from cluster.db.engine import create_engine, session_factory
from cluster.db.migrate import upgrade
from cluster.security.auth_cache import CachedAuthenticator
from cluster.security.keys import KeyStore
from cluster.settings import Settings
from tests.clock import FakeClock

ERROR_KEYS = {"code", "message", "request_id"}


@asynccontextmanager
async def key_store(settings: Settings, clock: FakeClock) -> AsyncIterator[KeyStore]:
    """A ``KeyStore`` on the settings' platform database, migrated to head first."""
    await upgrade(settings)
    engine = create_engine(settings)
    try:
        yield KeyStore(session_factory(engine), now=clock.now)
    finally:
        await engine.dispose()


def authenticator(store: KeyStore, clock: FakeClock) -> CachedAuthenticator:
    """What the Serve deployment puts in front of the key store, on the fake clock."""
    return CachedAuthenticator(store, ttl_s=5.0, now=clock.monotonic, utcnow=clock.now)


def client(app: FastAPI) -> httpx.AsyncClient:
    return httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://t")


def error_of(reply: httpx.Response) -> dict[str, Any]:
    """The one error body; its request id is the one the response header carries."""
    assert reply.headers["content-type"].startswith("application/json"), reply.headers
    body = reply.json()
    assert set(body["error"]) == ERROR_KEYS, body
    assert body["error"]["request_id"] == reply.headers["x-request-id"]
    error: dict[str, Any] = body["error"]
    return error
