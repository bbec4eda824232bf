"""The audit store's contract: one chain, tamper evidence, serialised concurrent appends.

A backend's test module subclasses ``AuditStoreContract`` and provides ``db_settings``:
settings whose platform database is fresh and empty (SQLite in unit tests, PostgreSQL in
integration tests). Tampering is done with plain SQL, as someone with database access
would do it; ``verify`` must name the first entry it broke.
"""

from __future__ import annotations

import asyncio
from datetime import timedelta

import pytest
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine

from cluster.db.engine import create_engine, session_factory
from cluster.security.audit import AuditDraft
from cluster.security.audit_store import AuditStore
from cluster.settings import Settings
from tests.clock import FakeClock
from tests.contracts.platform_db import PlatformDbContract

APPENDERS = 6
APPENDS_EACH = 8


def draft(n: int, clock: FakeClock, **fields: object) -> AuditDraft:
    values: dict[str, object] = {
        "at": clock.now() + timedelta(seconds=n),
        "method": "POST",
        "route": "/api/v1/lake/tables/{name}/append",
        "status": 200,
        "outcome": "ok",
        "request_id": f"req-{n}",
        "actor": "key_000000000001",
        "actor_kind": "key",
        "actor_name": "loader",
        "role": "service",
        "permission": "lake.table:write",
        "target": "table:sales.orders",
        "client": "10.0.0.7",
    }
    values.update(fields)
    return AuditDraft(**values)  # type: ignore[arg-type]


class AuditStoreContract(PlatformDbContract):
    """What every platform-database backend must do for the audit log."""

    @pytest.fixture
    def store(self, engine: AsyncEngine, clock: FakeClock) -> AuditStore:
        return AuditStore(session_factory(engine), clock.now)

    async def _filled(self, store: AuditStore, clock: FakeClock, count: int = 5) -> None:
        await store.append([draft(n, clock) for n in range(1, count + 1)])

    async def _sql(self, engine: AsyncEngine, *statements: str) -> None:
        async with engine.begin() as connection:
            for statement in statements:
                await connection.execute(text(statement))

    # ---- appends and reads --------------------------------------------------------

    async def test_an_empty_log_verifies(self, store: AuditStore) -> None:
        report = await store.verify()
        assert report.ok
        assert (report.checked, report.head_seq) == (0, 0)

    async def test_appends_chain_and_read_back_unchanged(
        self, store: AuditStore, clock: FakeClock
    ) -> None:
        first = await store.append([draft(1, clock), draft(2, clock, target="x" * 5000)])
        second = await store.append([draft(3, clock, actor=None, status=401, outcome="denied")])
        assert [r.seq for r in first + second] == [1, 2, 3]
        assert first[1].prev_hash == first[0].hash
        assert second[0].prev_hash == first[1].hash
        assert len(first[1].draft.target or "") == 2000  # cut to fit before hashing
        stored = await store.list(newest_first=False)
        assert stored == first + second
        assert await store.head() == (3, second[0].hash)
        report = await store.verify()
        assert (report.ok, report.checked) == (True, 3)

    async def test_list_filters(self, store: AuditStore, clock: FakeClock) -> None:
        await store.append(
            [
                draft(1, clock),
                draft(2, clock, actor="key_b", actor_name="bi", status=403, outcome="denied"),
                draft(3, clock, status=500, outcome="error"),
                draft(4, clock, actor=None, actor_name=None, status=401, outcome="denied"),
            ]
        )
        assert [r.seq for r in await store.list()] == [4, 3, 2, 1]
        assert [r.seq for r in await store.list(outcome="denied")] == [4, 2]
        assert [r.seq for r in await store.list(who="bi")] == [2]
        assert [r.seq for r in await store.list(who="key_b")] == [2]
        since = clock.now() + timedelta(seconds=3)
        assert [r.seq for r in await store.list(since=since)] == [4, 3]
        assert [r.seq for r in await store.list(after_seq=2, newest_first=False)] == [3, 4]
        assert [r.seq for r in await store.list(limit=1)] == [4]

    # ---- tampering ----------------------------------------------------------------

    async def test_a_changed_field_is_named_by_seq(
        self, store: AuditStore, engine: AsyncEngine, clock: FakeClock
    ) -> None:
        await self._filled(store, clock)
        await self._sql(engine, "UPDATE audit_log SET status = 200, outcome = 'ok' WHERE seq = 3")
        assert (await store.verify()).ok  # same values: nothing changed
        await self._sql(engine, "UPDATE audit_log SET actor = 'key_someone_else' WHERE seq = 3")
        report = await store.verify()
        assert not report.ok
        assert report.broken_seq == 3
        assert report.checked == 2
        assert "changed" in (report.problem or "")

    async def test_a_deleted_row_is_named_by_seq(
        self, store: AuditStore, engine: AsyncEngine, clock: FakeClock
    ) -> None:
        await self._filled(store, clock)
        await self._sql(engine, "DELETE FROM audit_log WHERE seq = 2")
        report = await store.verify()
        assert (report.ok, report.broken_seq) == (False, 2)
        assert "missing" in (report.problem or "")

    async def test_reordered_rows_are_detected(
        self, store: AuditStore, engine: AsyncEngine, clock: FakeClock
    ) -> None:
        await self._filled(store, clock)
        await self._sql(
            engine,
            "UPDATE audit_log SET seq = -2 WHERE seq = 2",
            "UPDATE audit_log SET seq = 2 WHERE seq = 3",
            "UPDATE audit_log SET seq = 3 WHERE seq = -2",
        )
        report = await store.verify()
        assert (report.ok, report.broken_seq) == (False, 2)

    async def test_rows_cut_off_the_end_are_detected(
        self, store: AuditStore, engine: AsyncEngine, clock: FakeClock
    ) -> None:
        await self._filled(store, clock)
        await self._sql(engine, "DELETE FROM audit_log WHERE seq >= 4")
        report = await store.verify()
        assert (report.ok, report.broken_seq, report.checked) == (False, 4, 3)
        assert "4..5" in (report.problem or "")

    async def test_a_rehashed_row_still_breaks_the_next_link(
        self, store: AuditStore, engine: AsyncEngine, clock: FakeClock
    ) -> None:
        """Recomputing one row's hash after changing it breaks the link of the next row."""
        from cluster.security.audit import entry_hash

        await self._filled(store, clock)
        forged = draft(2, clock, actor="key_innocent").cleaned()
        rows = await store.list(newest_first=False)
        new_hash = entry_hash(rows[1].prev_hash, 2, forged)
        await self._sql(
            engine,
            f"UPDATE audit_log SET actor = 'key_innocent', hash = '{new_hash}' WHERE seq = 2",
        )
        report = await store.verify()
        assert (report.ok, report.broken_seq) == (False, 3)
        assert "link" in (report.problem or "")

    # ---- concurrency --------------------------------------------------------------

    async def test_concurrent_appenders_keep_one_chain(
        self, db_settings: Settings, engine: AsyncEngine, clock: FakeClock
    ) -> None:
        """Several appenders, each on its own engine (as gateway replicas are), at once."""
        engines = [create_engine(db_settings) for _ in range(APPENDERS)]
        try:
            stores = [AuditStore(session_factory(e), clock.now) for e in engines]

            async def appender(index: int, store: AuditStore) -> None:
                for n in range(APPENDS_EACH):
                    batch = [draft(n, clock, actor=f"key_{index}")] * (1 + n % 3)
                    await store.append(batch)

            await asyncio.gather(*(appender(i, s) for i, s in enumerate(stores)))
        finally:
            for each in engines:
                await each.dispose()
        store = AuditStore(session_factory(engine), clock.now)
        expected = APPENDERS * sum(1 + n % 3 for n in range(APPENDS_EACH))
        report = await store.verify()
        assert report.ok, report
        assert (report.checked, report.head_seq) == (expected, expected)
        rows = await store.list(newest_first=False, limit=expected)
        assert [r.seq for r in rows] == list(range(1, expected + 1))
        per_actor = {f"key_{i}": 0 for i in range(APPENDERS)}
        for row in rows:
            per_actor[row.draft.actor or ""] += 1
        assert set(per_actor.values()) == {expected // APPENDERS}
