"""Scoped grants and the audit log on the real PostgreSQL: the audit store's contract
(concurrent appenders from several engines keep one chain) and keys that carry grants."""

from __future__ import annotations

import asyncio
from datetime import timedelta
from pathlib import Path

import pytest

from cluster.db.engine import create_engine, session_factory
from cluster.db.migrate import upgrade
from cluster.security.audit_store import AuditStore
from cluster.security.grant_store import GrantStore, copy_key_grants
from cluster.security.grants import make_grant
from cluster.security.keys import KeyStore
from cluster.security.rbac import Role
from cluster.settings import Settings
from tests.clock import FakeClock
from tests.contracts.audit_store import AuditStoreContract, draft

pytestmark = pytest.mark.integration


class TestAuditStoreOnPostgres(AuditStoreContract):
    @pytest.fixture
    def db_settings(self, data_dir: Path, postgres_url: str) -> Settings:
        return Settings(data_dir=data_dir, database_url=postgres_url)


async def test_many_concurrent_single_appends_on_one_engine(
    data_dir: Path, postgres_url: str
) -> None:
    """The gateway's queue writes small batches; many at once still make one chain."""
    settings = Settings(data_dir=data_dir, database_url=postgres_url)
    await upgrade(settings)
    clock = FakeClock()
    engine = create_engine(settings)
    try:
        store = AuditStore(session_factory(engine), clock.now)
        await asyncio.gather(*(store.append([draft(n, clock)]) for n in range(40)))
        report = await store.verify()
        assert (report.ok, report.checked, report.head_seq) == (True, 40, 40)
    finally:
        await engine.dispose()


async def test_keys_carry_grants_and_rotation_copies_them(
    data_dir: Path, postgres_url: str
) -> None:
    settings = Settings(data_dir=data_dir, database_url=postgres_url)
    await upgrade(settings)
    clock = FakeClock()
    engine = create_engine(settings)
    try:
        sessions = session_factory(engine)
        keys = KeyStore(sessions, clock.now, on_rotate=(copy_key_grants,))
        grants = GrantStore(sessions, clock.now)
        token, record = await keys.create(Role.ENGINEER)
        wanted = [
            make_grant("lake.table:read", "namespace:sales"),
            make_grant("model:predict", "model:churn"),
        ]
        await grants.replace(record.id, wanted, created_by="admin")
        assert set((await keys.authenticate(token)).grants) == set(wanted)
        await grants.add(record.id, "lake.table:read", "namespace:sales")  # idempotent
        _, new_token = await keys.rotate(record.id, overlap=timedelta(minutes=5), actor="t")
        assert set((await keys.authenticate(new_token)).grants) == set(wanted)
        assert set((await keys.authenticate(token)).grants) == set(wanted)
    finally:
        await engine.dispose()
