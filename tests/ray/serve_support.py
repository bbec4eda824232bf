"""What the Serve tests share: their settings, keys seeded in the platform database, and
apps deployed behind the test gateway port for as long as a module's tests run.

Used by the module-scoped fixtures in ``test_gateway_serve.py``,
``test_gateway_identity_serve.py`` and ``test_cortex_serving.py``, on the session's
``ray_cluster``.
"""

from __future__ import annotations

import time
from collections.abc import AsyncIterator, Callable, Iterator, Mapping, Sequence
from contextlib import asynccontextmanager, contextmanager
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx
from ray import serve
from ray.serve import Application
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from cluster.db.engine import create_engine, session_factory
from cluster.db.migrate import upgrade
from cluster.pools import start_pools, stop_pools
from cluster.security.keys import KeyStore
from cluster.settings import Settings, load_settings
from tests.ray.conftest import TEST_GATEWAY_PORT, TEST_NAMESPACE, TEST_SERVE_PORTS

BASE_URL = f"http://127.0.0.1:{TEST_GATEWAY_PORT}"


def utcnow() -> datetime:
    return datetime.now(UTC)


def serve_settings(
    data_dir: Path, *, gateway: Mapping[str, Any] | None = None, **sections: Any
) -> Settings:
    """Settings in the test namespace with the gateway on the test ports; ``gateway``
    adds gateway keys, ``sections`` other top-level sections (``cortex=``, ``auth=``)."""
    return load_settings(
        data_dir=data_dir,
        ray={"namespace": TEST_NAMESPACE},
        gateway={"port": TEST_GATEWAY_PORT, **(gateway or {}), **TEST_SERVE_PORTS},
        **sections,
    )


@asynccontextmanager
async def migrated_sessions(settings: Settings) -> AsyncIterator[async_sessionmaker[AsyncSession]]:
    """Sessions on the settings' platform database, migrated to head first."""
    await upgrade(settings)
    engine = create_engine(settings)
    try:
        yield session_factory(engine)
    finally:
        await engine.dispose()


async def create_keys(settings: Settings, *keys: tuple[str, str]) -> list[str]:
    """Create an API key per ``(role, name)`` in a migrated platform database; the
    secrets, in the same order."""
    async with migrated_sessions(settings) as sessions:
        store = KeyStore(sessions, now=utcnow)
        return [(await store.create(role=role, name=name))[0] for role, name in keys]


def bearer(key: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"}


def wait_ready(base: str, timeout_s: float = 60) -> None:
    """Poll the gateway's ``/readyz`` until it answers 200; fail the fixture if it never does."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        try:
            if httpx.get(f"{base}/readyz", timeout=5).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.3)
    raise AssertionError(f"gateway at {base} never became ready")


def _wait_gone(app: str, timeout_s: float = 90) -> None:
    deadline = time.monotonic() + timeout_s
    while app in serve.status().applications and time.monotonic() < deadline:
        time.sleep(0.5)


@contextmanager
def deployed_apps(
    settings: Settings,
    apps: Sequence[tuple[str, Callable[[Settings], Application], str | None]],
    *,
    pools: bool = True,
    ready_timeout_s: float = 60,
) -> Iterator[str]:
    """Build and run ``(name, build, route_prefix)`` in order behind the test gateway
    port (after the actor pools when ``pools``), wait for the gateway's ``/readyz`` and
    yield its base URL; afterwards delete the apps (and stop the pools)."""
    serve.start(http_options={"host": "127.0.0.1", "port": TEST_GATEWAY_PORT})
    if pools:
        start_pools(settings)
    for name, build, route_prefix in apps:
        serve.run(build(settings), name=name, route_prefix=route_prefix)
    wait_ready(BASE_URL, ready_timeout_s)
    try:
        yield BASE_URL
    finally:
        # Each app's replicas drain for Serve's direct-ingress period: drain them all at
        # once, waiting on the first-deployed, then for the others to be gone too.
        *others, first = [name for name, _, _ in reversed(apps)]
        for name in others:
            serve.delete(name, _blocking=False)
        serve.delete(first)
        for name in others:
            _wait_gone(name)
        if pools:
            stop_pools(settings)
