"""The identity stores' contract: users, recovery codes, sessions and key rotation, run
on SQLite (unit) and PostgreSQL (integration).

A backend's test module subclasses ``AccountStoreContract`` and provides
``db_settings``: settings whose platform database is fresh and empty.
"""

from __future__ import annotations

import asyncio
from datetime import timedelta

import pytest
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine

from cluster.db.engine import session_factory
from cluster.errors import AuthenticationError, NotFoundError, PlatformStateError
from cluster.security.keys import KeyStore
from cluster.security.rbac import Role
from cluster.security.session_store import SessionStore, new_session_id
from cluster.security.user_store import UserStore
from tests.clock import FakeClock
from tests.contracts.platform_db import PlatformDbContract

HASH = "$argon2id$v=19$m=1024,t=1,p=1$c2FsdHNhbHQ$aGFzaGhhc2hoYXNoaGFzaA"


class AccountStoreContract(PlatformDbContract):
    """What every platform-database backend must do for identities."""

    @pytest.fixture
    def users(self, engine: AsyncEngine, clock: FakeClock) -> UserStore:
        return UserStore(session_factory(engine), clock.now)

    @pytest.fixture
    def sessions(self, engine: AsyncEngine, clock: FakeClock) -> SessionStore:
        return SessionStore(session_factory(engine), clock.now)

    @pytest.fixture
    def keys(self, engine: AsyncEngine, clock: FakeClock) -> KeyStore:
        return KeyStore(session_factory(engine), clock.now)

    # ---- users -----------------------------------------------------------------------

    async def test_create_find_and_list(self, users: UserStore, clock: FakeClock) -> None:
        created = await users.create("alice", Role.ENGINEER, HASH, "cli:root")
        assert created.id.startswith("usr_")
        assert (created.username, created.role, created.created_by) == (
            "alice",
            Role.ENGINEER,
            "cli:root",
        )
        assert created.created_at == clock.now()
        assert (created.mfa, created.failed_logins, created.status(clock.now())) == (
            "off",
            0,
            "active",
        )
        found = await users.find("alice")
        assert found is not None and found.record == created and found.password_hash == HASH
        assert await users.find("bob") is None
        by_id = await users.get(created.id)
        assert by_id is not None and by_id.record == created
        assert HASH not in repr(found)
        assert [u.username for u in await users.list()] == ["alice"]

    async def test_a_taken_username_is_refused(self, users: UserStore) -> None:
        await users.create("alice", Role.ANALYST, HASH, None)
        with pytest.raises(PlatformStateError, match="'alice' already exists"):
            await users.create("alice", Role.ADMIN, HASH, None)
        assert len(await users.list()) == 1

    async def test_failures_lock_at_the_threshold_then_count_again(
        self, users: UserStore, clock: FakeClock
    ) -> None:
        user = await users.create("alice", Role.ANALYST, HASH, None)
        for _ in range(2):
            assert await users.record_failure(user.id, 3, timedelta(minutes=15)) is None
        until = await users.record_failure(user.id, 3, timedelta(minutes=15))
        assert until == clock.now() + timedelta(minutes=15)
        stored = await users.get(user.id)
        assert stored is not None
        assert stored.record.status(clock.now()) == "locked"
        assert stored.record.failed_logins == 0  # the next window starts from zero
        clock.advance(15 * 60)
        assert stored.record.status(clock.now()) == "active"

    async def test_concurrent_failures_are_all_counted(self, users: UserStore) -> None:
        user = await users.create("alice", Role.ANALYST, HASH, None)
        results = await asyncio.gather(
            *(users.record_failure(user.id, 5, timedelta(minutes=1)) for _ in range(5))
        )
        assert sum(r is not None for r in results) == 1

    async def test_success_resets_and_stores_a_rehash(
        self, users: UserStore, clock: FakeClock
    ) -> None:
        user = await users.create("alice", Role.ANALYST, HASH, None)
        await users.record_failure(user.id, 5, timedelta(minutes=1))
        await users.record_success(user.id, new_hash="$argon2id$new")
        stored = await users.get(user.id)
        assert stored is not None
        assert stored.password_hash == "$argon2id$new"
        assert (stored.record.failed_logins, stored.record.last_login_at) == (0, clock.now())

    async def test_admin_changes(self, users: UserStore, clock: FakeClock) -> None:
        user = await users.create("alice", Role.ANALYST, HASH, None)
        await users.record_failure(user.id, 1, timedelta(hours=1))
        assert (await users.unlock("alice")).status(clock.now()) == "active"
        first = await users.set_disabled("alice", True)
        clock.advance(5)
        again = await users.set_disabled("alice", True)
        assert again.disabled_at == first.disabled_at == clock.now() - timedelta(seconds=5)
        assert again.status(clock.now()) == "disabled"
        assert (await users.set_disabled("alice", False)).disabled_at is None
        for call in (users.unlock, users.reset_mfa):
            with pytest.raises(NotFoundError, match="'nobody'"):
                await call("nobody")

    # ---- multi-factor ----------------------------------------------------------------

    async def test_mfa_enrolment_replay_and_recovery_codes(self, users: UserStore) -> None:
        user = await users.create("alice", Role.ANALYST, HASH, None)
        await users.start_mfa(user.id, "SEED" * 8, ["a" * 64, "b" * 64])
        pending = await users.get(user.id)
        assert pending is not None and pending.record.mfa == "pending"
        assert pending.mfa_secret == "SEED" * 8
        assert await users.enable_mfa(user.id, step=100)
        assert not await users.enable_mfa(user.id, step=101)  # only a pending one
        with pytest.raises(PlatformStateError, match="reset-mfa"):
            await users.start_mfa(user.id, "OTHER" * 6, [])
        assert not await users.use_totp_step(user.id, 100)  # the confirming code is spent
        assert not await users.use_totp_step(user.id, 99)
        assert await users.use_totp_step(user.id, 101)
        assert not await users.use_totp_step(user.id, 101)
        assert await users.recovery_codes_left(user.id) == 2
        assert await users.use_recovery_code(user.id, "a" * 64)
        assert not await users.use_recovery_code(user.id, "a" * 64)
        assert not await users.use_recovery_code(user.id, "c" * 64)
        assert await users.recovery_codes_left(user.id) == 1
        reset = await users.reset_mfa("alice")
        assert reset.mfa == "off"
        assert await users.recovery_codes_left(user.id) == 0

    async def test_a_step_is_used_once_under_concurrency(self, users: UserStore) -> None:
        user = await users.create("alice", Role.ANALYST, HASH, None)
        results = await asyncio.gather(*(users.use_totp_step(user.id, 7) for _ in range(4)))
        assert sorted(results) == [False, False, False, True]

    # ---- sessions --------------------------------------------------------------------

    async def test_session_advance_is_compare_and_set(
        self, users: UserStore, sessions: SessionStore, clock: FakeClock
    ) -> None:
        user = await users.create("alice", Role.ANALYST, HASH, None)
        sid = new_session_id()
        expiry = clock.now() + timedelta(days=7)
        created = await sessions.create(sid, user.id, "jti-1", expiry)
        assert created.active(clock.now())
        clock.advance(60)
        later = clock.now() + timedelta(days=7)
        assert await sessions.advance(sid, "jti-1", "jti-2", later)
        assert not await sessions.advance(sid, "jti-1", "jti-3", later)  # a reuse
        record = await sessions.get(sid)
        assert record is not None
        assert (record.refresh_jti, record.refreshed_at, record.expires_at) == (
            "jti-2",
            clock.now(),
            later,
        )
        assert await sessions.revoke(sid, "logout")
        assert not await sessions.revoke(sid, "again")
        record = await sessions.get(sid)
        assert record is not None and record.revoked_reason == "logout"
        assert not record.active(clock.now())
        assert not await sessions.advance(sid, "jti-2", "jti-4", later)
        assert await sessions.get("ses_missing") is None

    async def test_revoke_user_ends_only_open_sessions(
        self, users: UserStore, sessions: SessionStore, clock: FakeClock
    ) -> None:
        alice = await users.create("alice", Role.ANALYST, HASH, None)
        bob = await users.create("bob", Role.ANALYST, HASH, None)
        expiry = clock.now() + timedelta(days=1)
        ids = [new_session_id() for _ in range(3)]
        await sessions.create(ids[0], alice.id, "j0", expiry)
        await sessions.create(ids[1], alice.id, "j1", expiry)
        await sessions.create(ids[2], bob.id, "j2", expiry)
        await sessions.revoke(ids[0], "logout")
        assert await sessions.revoke_user(alice.id, "account disabled") == [ids[1]]
        bobs = await sessions.get(ids[2])
        assert bobs is not None and bobs.revoked_at is None

    # ---- API-key rotation ------------------------------------------------------------

    async def test_rotation_overlaps_then_ends(self, keys: KeyStore, clock: FakeClock) -> None:
        old_token, old = await keys.create(Role.SERVICE, "ingest", created_by="cli:root")
        new, new_token = await keys.rotate(old.id, overlap=timedelta(hours=1), actor="cli:ops")
        assert (new.name, new.role, new.replaces, new.created_by) == (
            "ingest",
            Role.SERVICE,
            old.id,
            "cli:ops",
        )
        assert (await keys.authenticate(new_token)).key_id == new.id
        clock.advance(3599)
        assert (await keys.authenticate(old_token)).key_id == old.id
        clock.advance(1)
        with pytest.raises(AuthenticationError, match="rotated") as caught:
            await keys.authenticate(old_token)
        assert caught.value.fields == {"reason": "rotated", "key_id": old.id}
        listed = {r.id: r for r in await keys.list()}
        assert listed[old.id].replaced_by == new.id
        assert listed[old.id].status(clock.now()) == "rotated"

    async def test_only_one_of_two_concurrent_rotations_wins(self, keys: KeyStore) -> None:
        _, old = await keys.create(Role.SERVICE)
        results = await asyncio.gather(
            *(keys.rotate(old.id, overlap=timedelta(0), actor=None) for _ in range(2)),
            return_exceptions=True,
        )
        errors = [r for r in results if isinstance(r, Exception)]
        assert len(errors) == 1, results
        assert isinstance(errors[0], PlatformStateError), errors
        assert len(await keys.list(include_revoked=True)) == 2

    async def test_no_secret_is_stored_in_plain(
        self, users: UserStore, engine: AsyncEngine
    ) -> None:
        await users.create("alice", Role.ANALYST, HASH, None)
        async with engine.connect() as connection:
            row = (await connection.execute(text("SELECT * FROM users"))).mappings().one()
        assert row["password_hash"] == HASH
