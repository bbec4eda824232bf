"""The ``KeyStore`` contract: one set of tests, run on SQLite (unit) and PostgreSQL.

A backend's test module subclasses ``KeyStoreContract`` and provides ``db_settings``:
settings whose platform database is fresh and empty.
"""

from __future__ import annotations

import hashlib
from datetime import UTC, datetime, timedelta, timezone

import pytest
from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext
from sqlalchemy import text
from sqlalchemy.engine import Connection
from sqlalchemy.ext.asyncio import AsyncEngine

from cluster.db.engine import create_engine, session_factory
from cluster.db.migrate import current_revision, head_revision, upgrade
from cluster.db.models import Base
from cluster.errors import (
    AuthenticationError,
    InvalidInputError,
    NotFoundError,
    PlatformStateError,
)
from cluster.security.keys import KeyStore
from cluster.security.principal import Principal
from cluster.security.rbac import Role
from cluster.settings import Settings
from tests.clock import FakeClock
from tests.contracts.platform_db import PlatformDbContract


class KeyStoreContract(PlatformDbContract):
    """What every platform-database backend must do for API keys."""

    @pytest.fixture
    def store(self, engine: AsyncEngine, clock: FakeClock) -> KeyStore:
        return KeyStore(session_factory(engine), clock.now)

    # ---- migrations ---------------------------------------------------------------

    async def test_migrations_are_idempotent(self, db_settings: Settings) -> None:
        assert await current_revision(db_settings) is None
        assert await upgrade(db_settings) == head_revision()
        assert await upgrade(db_settings) == head_revision()
        assert await current_revision(db_settings) == head_revision()

    async def test_migrated_schema_matches_the_models(self, engine: AsyncEngine) -> None:
        def diff(connection: Connection) -> list[object]:
            return compare_metadata(
                MigrationContext.configure(connection, opts={"compare_type": True}),
                Base.metadata,
            )

        async with engine.connect() as connection:
            assert await connection.run_sync(diff) == []

    async def test_using_an_unmigrated_database_says_to_upgrade(
        self, db_settings: Settings, clock: FakeClock
    ) -> None:
        engine = create_engine(db_settings)
        try:
            store = KeyStore(session_factory(engine), clock.now)
            with pytest.raises(PlatformStateError, match="datapunk db upgrade"):
                await store.authenticate("dp_" + "x" * 43)
        finally:
            await engine.dispose()

    # ---- create / authenticate ----------------------------------------------------

    async def test_create_returns_the_token_once_with_a_record(
        self, store: KeyStore, clock: FakeClock
    ) -> None:
        token, record = await store.create(
            Role.ANALYST, "dashboards", timedelta(days=30), created_by="cli:test"
        )
        assert token.startswith("dp_")
        assert record.id.startswith("key_") and len(record.id) == 16
        assert (record.name, record.role, record.created_by) == (
            "dashboards",
            Role.ANALYST,
            "cli:test",
        )
        assert record.prefix == token[:10]
        assert record.created_at == clock.now()
        assert record.expires_at == clock.now() + timedelta(days=30)
        assert record.revoked_at is None

    async def test_a_created_key_authenticates(self, store: KeyStore) -> None:
        token, record = await store.create("engineer", "ci")
        principal = await store.authenticate(token)
        assert principal == Principal(key_id=record.id, name="ci", role=Role.ENGINEER)

    async def test_name_defaults_to_the_role(self, store: KeyStore) -> None:
        _, record = await store.create("service")
        assert record.name == "service key"

    async def test_unknown_token_is_refused_without_echoing_it(self, store: KeyStore) -> None:
        await store.create("admin")
        stranger = "dp_" + "A" * 43
        with pytest.raises(AuthenticationError, match="unknown API key") as caught:
            await store.authenticate(stranger)
        assert stranger not in caught.value.message
        assert caught.value.fields["reason"] == "unknown"

    async def test_malformed_token_is_refused(self, store: KeyStore) -> None:
        with pytest.raises(AuthenticationError, match="malformed"):
            await store.authenticate("Bearer something")

    async def test_revoked_key_is_refused(self, store: KeyStore, clock: FakeClock) -> None:
        token, record = await store.create("admin", "old")
        clock.advance(60)
        revoked = await store.revoke(record.id)
        assert revoked.revoked_at == clock.now()
        with pytest.raises(AuthenticationError, match="revoked") as caught:
            await store.authenticate(token)
        assert caught.value.fields == {"reason": "revoked", "key_id": record.id}
        assert token not in caught.value.message

    async def test_key_expires_at_its_expiry(self, store: KeyStore, clock: FakeClock) -> None:
        token, record = await store.create("service", "ingest", timedelta(hours=1))
        clock.advance(3599)
        assert (await store.authenticate(token)).expires_at == record.expires_at
        clock.advance(1)
        with pytest.raises(AuthenticationError, match="expired") as caught:
            await store.authenticate(token)
        assert caught.value.fields["reason"] == "expired"

    async def test_refusal_messages_are_distinct(self, store: KeyStore, clock: FakeClock) -> None:
        revoked_token, revoked = await store.create("admin")
        await store.revoke(revoked.id)
        expired_token, _ = await store.create("admin", expires_in=timedelta(seconds=1))
        clock.advance(2)
        reasons = []
        for token, word in (
            ("dp_" + "B" * 43, "unknown"),
            (revoked_token, "revoked"),
            (expired_token, "expired"),
        ):
            with pytest.raises(AuthenticationError) as caught:
                await store.authenticate(token)
            assert word in caught.value.message
            assert token not in caught.value.message
            reasons.append(caught.value.fields["reason"])
        assert reasons == ["unknown", "revoked", "expired"]

    async def test_only_the_digest_is_stored(self, store: KeyStore, engine: AsyncEngine) -> None:
        token, _ = await store.create("admin", "root")
        async with engine.connect() as connection:
            rows = (await connection.execute(text("SELECT * FROM api_keys"))).mappings().all()
        assert len(rows) == 1
        row = dict(rows[0])
        assert row["digest"] == hashlib.sha256(token.encode()).hexdigest()
        secret_part = token[10:]  # everything past the displayed prefix
        for value in row.values():
            assert secret_part not in str(value)
            assert token not in str(value)

    async def test_invalid_arguments_are_rejected(self, store: KeyStore) -> None:
        with pytest.raises(InvalidInputError, match="admin, engineer, analyst, service"):
            await store.create("superuser")
        with pytest.raises(InvalidInputError, match="expires_in"):
            await store.create("admin", expires_in=timedelta(0))
        with pytest.raises(InvalidInputError, match="name"):
            await store.create("admin", name="  ")
        assert await store.list(include_revoked=True) == []

    # ---- list / revoke --------------------------------------------------------------

    async def test_list_hides_revoked_keys_unless_asked(
        self, store: KeyStore, clock: FakeClock
    ) -> None:
        _, first = await store.create("admin", "first")
        clock.advance(1)
        _, second = await store.create("analyst", "second")
        clock.advance(1)
        _, third = await store.create("service", "third", timedelta(seconds=1))
        await store.revoke(second.id)
        clock.advance(5)
        assert [r.id for r in await store.list()] == [first.id, third.id]
        everything = await store.list(include_revoked=True)
        assert [r.id for r in everything] == [first.id, second.id, third.id]
        statuses = [r.status(clock.now()) for r in everything]
        assert statuses == ["active", "revoked", "expired"]

    async def test_revoking_an_unknown_key_is_not_found(self, store: KeyStore) -> None:
        with pytest.raises(NotFoundError, match="key_doesnotexist"):
            await store.revoke("key_doesnotexist")

    async def test_revoking_twice_keeps_the_first_time(
        self, store: KeyStore, clock: FakeClock
    ) -> None:
        _, record = await store.create("admin")
        first = await store.revoke(record.id)
        clock.advance(10)
        again = await store.revoke(record.id)
        assert again.revoked_at == first.revoked_at

    async def test_timestamps_round_trip_as_aware_utc(self, engine: AsyncEngine) -> None:
        local = timezone(timedelta(hours=2))
        clock = FakeClock(datetime(2026, 6, 1, 12, 30, 15, 123456, tzinfo=local))
        store = KeyStore(session_factory(engine), clock.now)
        _, created = await store.create("admin", expires_in=timedelta(minutes=5))
        [listed] = await store.list()
        assert listed == created
        assert listed.created_at == datetime(2026, 6, 1, 10, 30, 15, 123456, tzinfo=UTC)
        assert listed.created_at.utcoffset() == timedelta(0)
        assert listed.expires_at is not None and listed.expires_at.tzinfo is not None
