"""Real services on this machine: PostgreSQL, Redis, RabbitMQ.

Outside CI an unreachable service skips its tests; under CI (``CI=true``) it fails
them, because a skipped integration test proves nothing.
"""

from __future__ import annotations

import os
import socket
import uuid
from collections.abc import Iterator

import pytest

PG_ADMIN_DSN = os.environ.get(
    "DATAPUNK_TEST_PG_DSN", "postgresql://postgres@127.0.0.1:5432/postgres"
)
REDIS_URL = os.environ.get("DATAPUNK_TEST_REDIS_URL", "redis://127.0.0.1:6379/15")
AMQP_URL = os.environ.get("DATAPUNK_TEST_AMQP_URL", "amqp://guest:guest@127.0.0.1:5672/")


def _reachable(host: str, port: int) -> bool:
    try:
        with socket.create_connection((host, port), timeout=2):
            return True
    except OSError:
        return False


def require_service(name: str, host: str, port: int) -> None:
    if _reachable(host, port):
        return
    message = f"{name} is not reachable at {host}:{port}"
    if os.environ.get("CI", "").lower() in ("1", "true", "yes"):
        pytest.fail(f"{message}; under CI integration tests must not skip", pytrace=False)
    pytest.skip(message)


@pytest.fixture(scope="session")
def postgres_admin_dsn() -> str:
    require_service("PostgreSQL", "127.0.0.1", 5432)
    return PG_ADMIN_DSN


@pytest.fixture
def postgres_url(postgres_admin_dsn: str) -> Iterator[str]:
    """A fresh, empty PostgreSQL database for one test, dropped afterwards (asyncpg URL)."""
    import psycopg2

    name = f"datapunk_test_{uuid.uuid4().hex[:12]}"
    admin = psycopg2.connect(postgres_admin_dsn)
    admin.autocommit = True
    with admin.cursor() as cur:
        cur.execute(f'CREATE DATABASE "{name}"')
    base = postgres_admin_dsn.rsplit("/", 1)[0].replace("postgresql://", "postgresql+asyncpg://")
    try:
        yield f"{base}/{name}"
    finally:
        with admin.cursor() as cur:
            cur.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        admin.close()


@pytest.fixture
def redis_url() -> Iterator[str]:
    """Redis database 15, flushed before and after each test."""
    import redis

    require_service("Redis", "127.0.0.1", 6379)
    client = redis.Redis.from_url(REDIS_URL)
    client.flushdb()
    try:
        yield REDIS_URL
    finally:
        client.flushdb()
        client.close()


@pytest.fixture
def amqp_url() -> str:
    require_service("RabbitMQ", "127.0.0.1", 5672)
    return AMQP_URL
