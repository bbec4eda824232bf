"""The canaries' contract: set, replace, roll back and promote canaries on a platform DB.

A backend's test module subclasses ``CanaryContract`` and provides ``db_settings``
(fresh and empty: SQLite in ``tests/unit/test_forge_canary.py``, PostgreSQL in
``tests/integration/test_forge_store_postgres.py``). Everything goes through
``ModelRegistry``, so what is checked is what the gateway, the CLI and Cortex's Serve
side get.
"""

from __future__ import annotations

import asyncio
from datetime import timedelta
from typing import Any

import pytest
from sqlalchemy.ext.asyncio import AsyncEngine

from actors.forge.artifacts import ArtifactStore, artifacts_root
from actors.forge.canary import CanaryStateError
from actors.forge.registry import ModelRegistry
from cluster.db.engine import connect, create_engine
from cluster.db.forge_store import RegistryStore
from cluster.db.migrate import current_revision, upgrade
from cluster.errors import InvalidInputError, NotFoundError
from cluster.settings import Settings
from tests.clock import FakeClock
from tests.contracts.forge_store import MODEL, register
from tests.contracts.platform_db import PlatformDbContract, downgrade_to, table_names

PROD = "production"
CANARY_TABLES = {"model_canaries", "model_canary_events"}
ROW_KEYS = {"name", "alias", "version", "percent", "sticky_key", "created_at", "created_by"}


def actions(events: list[dict[str, Any]]) -> list[tuple[str, int, float, int | None]]:
    return [(e["action"], e["version"], e["percent"], e["alias_version"]) for e in events]


class CanaryContract(PlatformDbContract):
    """What canaries must do on every platform-database backend."""

    @pytest.fixture
    async def registry(
        self, engine: AsyncEngine, clock: FakeClock, db_settings: Settings
    ) -> ModelRegistry:
        """Model ``churn`` with versions 1 to 4 and ``production`` at version 1."""
        artifacts = ArtifactStore(artifacts_root(db_settings))
        registry = ModelRegistry(RegistryStore.from_engine(engine, clock.now), artifacts, clock.now)
        for _ in range(4):
            await register(registry)
        await registry.set_alias(MODEL, PROD, 1, actor="cli:ana")
        return registry

    # ---- set, replace, clear -------------------------------------------------------

    async def test_set_lists_and_replaces_a_canary(
        self, registry: ModelRegistry, clock: FakeClock
    ) -> None:
        assert await registry.canaries() == [] and await registry.canaries(MODEL) == []
        started = await registry.set_canary(
            MODEL, PROD, version=2, percent=20, sticky_key="X-User", actor="cli:ana", reason="try"
        )
        row = {
            "name": MODEL,
            "alias": PROD,
            "version": 2,
            "percent": 20.0,
            "sticky_key": "X-User",
            "created_at": clock.now().isoformat(),
            "created_by": "cli:ana",
        }
        assert started == {**row, "alias_version": 1, "replaced": None}
        assert await registry.canaries(MODEL) == [row] == await registry.canaries()
        assert isinstance((await registry.canaries())[0]["percent"], float)

        clock.advance(5)
        replaced = await registry.set_canary(MODEL, PROD, version=3, percent=12.5, actor="cli:bo")
        assert replaced["replaced"] == row
        (now,) = await registry.canaries(MODEL)
        assert set(now) == ROW_KEYS
        assert (now["version"], now["percent"], now["sticky_key"], now["created_by"]) == (
            3,
            12.5,
            None,
            "cli:bo",
        )
        assert now["created_at"] == clock.now().isoformat()
        events = await registry.canary_history(MODEL, PROD)
        assert actions(events) == [("start", 2, 20.0, 1), ("replace", 3, 12.5, 1)]
        assert (events[0]["actor"], events[0]["reason"], events[0]["sticky_key"]) == (
            "cli:ana",
            "try",
            "X-User",
        )
        # A canary does not move the alias: its history is untouched.
        assert [e["to_version"] for e in await registry.history(MODEL, PROD)] == [1]
        assert (await registry.version(MODEL, PROD))["version"] == 1

    async def test_clear_is_the_rollback_and_is_idempotent(
        self, registry: ModelRegistry, clock: FakeClock
    ) -> None:
        assert await registry.clear_canary(MODEL, PROD) is None  # none yet: fine
        await registry.set_canary(MODEL, PROD, version=2, percent=30, actor="cli:ana")
        clock.advance(60)
        removed = await registry.clear_canary(MODEL, PROD, actor="cli:bo", reason="errors up")
        assert removed is not None and set(removed) == ROW_KEYS
        assert (removed["version"], removed["percent"]) == (2, 30.0)
        assert await registry.canaries() == []
        assert await registry.clear_canary(MODEL, PROD, actor="cli:bo") is None
        events = await registry.canary_history(MODEL)
        assert actions(events) == [("start", 2, 30.0, 1), ("rollback", 2, 30.0, 1)]
        assert (events[1]["actor"], events[1]["reason"]) == ("cli:bo", "errors up")
        assert events[1]["at"] == clock.now().isoformat()
        assert (await registry.version(MODEL, PROD))["version"] == 1

    async def test_promote_moves_the_alias_through_its_history(
        self, registry: ModelRegistry, clock: FakeClock
    ) -> None:
        await registry.set_canary(MODEL, PROD, version=3, percent=25, actor="cli:ana")
        clock.advance(10)
        before = clock.now()
        clock.advance(10)
        promoted = await registry.promote_canary(MODEL, PROD, actor="cli:bo")
        assert (promoted["version"], promoted["previous_version"], promoted["updated_by"]) == (
            3,
            1,
            "cli:bo",
        )
        assert promoted["canary"]["version"] == 3 and promoted["canary"]["percent"] == 25.0
        assert await registry.canaries() == []
        assert (await registry.version(MODEL, PROD))["version"] == 3
        moves = await registry.history(MODEL, PROD)
        assert [(e["from_version"], e["to_version"], e["actor"]) for e in moves] == [
            (None, 1, "cli:ana"),
            (1, 3, "cli:bo"),
        ]
        assert "canary" in moves[-1]["reason"]
        assert await registry.alias_at(MODEL, PROD, before) == 1
        assert await registry.alias_at(MODEL, PROD, clock.now()) == 3
        assert actions(await registry.canary_history(MODEL)) == [
            ("start", 3, 25.0, 1),
            ("promote", 3, 25.0, 1),
        ]
        with pytest.raises(NotFoundError, match=r"canary of alias 'production'.*datapunk models"):
            await registry.promote_canary(MODEL, PROD, actor="cli:bo")
        anonymous = await registry.set_canary(MODEL, PROD, version=4, percent=5)
        assert anonymous["created_by"] is None
        assert (await registry.promote_canary(MODEL, PROD, reason="ship"))[
            "updated_by"
        ] == "unknown"
        assert (await registry.history(MODEL, PROD))[-1]["reason"] == "ship"

    # ---- alias moves and removals around a canary ------------------------------------

    async def test_moving_the_alias_onto_the_canary_version_stops_it(
        self, registry: ModelRegistry
    ) -> None:
        await registry.set_canary(MODEL, PROD, version=3, percent=10, actor="cli:ana")
        await registry.set_alias(MODEL, PROD, 2, actor="cli:bo")  # elsewhere: canary stays
        (kept,) = await registry.canaries(MODEL)
        assert kept["version"] == 3
        await registry.set_alias(MODEL, PROD, 3, actor="cli:cy")  # onto it: nothing to split
        assert await registry.canaries() == []
        stopped = (await registry.canary_history(MODEL))[-1]
        assert (stopped["action"], stopped["alias_version"], stopped["actor"]) == (
            "stop",
            2,
            "cli:cy",
        )

    async def test_an_alias_with_a_canary_is_not_removed(self, registry: ModelRegistry) -> None:
        await registry.set_canary(MODEL, PROD, version=2, percent=10)
        with pytest.raises(CanaryStateError, match=r"10% to version 2.*rollback churn") as caught:
            await registry.remove_alias(MODEL, PROD, actor="cli:ana")
        assert caught.value.http_status == 409
        assert (await registry.version(MODEL, PROD))["version"] == 1
        await registry.clear_canary(MODEL, PROD)
        await registry.remove_alias(MODEL, PROD, actor="cli:ana")
        assert await registry.all_aliases() == []

    # ---- refusals ------------------------------------------------------------------

    async def test_bad_values_are_refused_naming_value_and_fix(
        self, registry: ModelRegistry
    ) -> None:
        bad_percents: list[Any] = [0, 100, -5, 100.5, float("nan"), float("inf"), True, "20"]
        for percent in bad_percents:
            with pytest.raises(InvalidInputError, match=r"percent=.*between 0 and 100"):
                await registry.set_canary(MODEL, PROD, version=2, percent=percent)
        for key in ("", "X User", "X_User", "x" * 65, "X-User\n", 7):
            with pytest.raises(InvalidInputError, match=r"sticky_key=.*header name.*X-User"):
                await registry.set_canary(MODEL, PROD, version=2, percent=5, sticky_key=key)  # type: ignore[arg-type]
        for version in (0, -1, "2", True):
            with pytest.raises(InvalidInputError, match=r"version=.*a version number"):
                await registry.set_canary(MODEL, PROD, version=version, percent=5)  # type: ignore[arg-type]
        with pytest.raises(InvalidInputError, match="actor"):
            await registry.set_canary(MODEL, PROD, version=2, percent=5, actor="x" * 101)
        assert await registry.canaries() == [] and await registry.canary_history(MODEL) == []

    async def test_state_that_forbids_a_canary_is_refused(self, registry: ModelRegistry) -> None:
        with pytest.raises(NotFoundError, match=r"version of model 'churn' '9'.*versions: 1 to 4"):
            await registry.set_canary(MODEL, PROD, version=9, percent=5)
        with pytest.raises(NotFoundError, match=r"alias of model 'churn' 'staging'.*production"):
            await registry.set_canary(MODEL, "staging", version=2, percent=5)
        with pytest.raises(CanaryStateError, match="already points at version 1") as caught:
            await registry.set_canary(MODEL, PROD, version=1, percent=5)
        assert caught.value.code == "canary_conflict" and caught.value.http_status == 409
        with pytest.raises(NotFoundError, match="registered models: churn"):
            await registry.set_canary("ghost", PROD, version=1, percent=5)
        for call in (
            registry.clear_canary("ghost", PROD),
            registry.promote_canary("ghost", PROD),
            registry.canaries("ghost"),
            registry.canary_history("ghost"),
        ):
            with pytest.raises(NotFoundError, match="model 'ghost'"):
                await call
        with pytest.raises(NotFoundError, match="alias of model 'churn' 'staging'"):
            await registry.promote_canary(MODEL, "staging")
        assert await registry.canaries() == []

    # ---- every alias at once ---------------------------------------------------------

    async def test_all_aliases_lists_every_model(self, registry: ModelRegistry) -> None:
        await register(registry, name="fraud")
        await registry.set_alias("fraud", PROD, 1, actor="a")
        await registry.set_alias(MODEL, "staging", 4, actor="a")
        await registry.set_canary(MODEL, PROD, version=2, percent=50)
        assert await registry.all_aliases() == [
            {"name": MODEL, "alias": PROD, "version": 1},
            {"name": MODEL, "alias": "staging", "version": 4},
            {"name": "fraud", "alias": PROD, "version": 1},
        ]
        await registry.promote_canary(MODEL, PROD)
        assert {"name": MODEL, "alias": PROD, "version": 2} in await registry.all_aliases()

    # ---- concurrency ---------------------------------------------------------------

    async def test_concurrent_writers_leave_one_consistent_canary(
        self, registry: ModelRegistry
    ) -> None:
        sets = [
            registry.set_canary(MODEL, PROD, version=v, percent=10.0 * v, actor=f"w{v}")
            for v in (2, 3, 4)
        ]
        done = await asyncio.gather(*sets)
        assert sorted(r["replaced"] is None for r in done) == [False, False, True]
        (left,) = await registry.canaries()
        assert left["percent"] == 10.0 * left["version"]
        kinds = [e["action"] for e in await registry.canary_history(MODEL)]
        assert kinds == ["start", "replace", "replace"]

        promotions = await asyncio.gather(
            registry.promote_canary(MODEL, PROD, actor="a"),
            registry.promote_canary(MODEL, PROD, actor="b"),
            return_exceptions=True,
        )
        won = [p for p in promotions if isinstance(p, dict)]
        lost = [p for p in promotions if isinstance(p, NotFoundError)]
        assert len(won) == 1 and len(lost) == 1, promotions
        assert (await registry.version(MODEL, PROD))["version"] == left["version"]
        assert [e["to_version"] for e in await registry.history(MODEL, PROD)] == [
            1,
            left["version"],
        ]
        assert await registry.canaries() == []

    async def test_history_is_per_alias_and_in_order(
        self, registry: ModelRegistry, clock: FakeClock
    ) -> None:
        await registry.set_alias(MODEL, "staging", 4, actor="a")
        await registry.set_canary(MODEL, "staging", version=2, percent=1)
        clock.advance(timedelta(minutes=1).total_seconds())
        await registry.set_canary(MODEL, PROD, version=2, percent=2)
        await registry.clear_canary(MODEL, "staging")
        assert [e["alias"] for e in await registry.canary_history(MODEL)] == [
            "staging",
            PROD,
            "staging",
        ]
        assert actions(await registry.canary_history(MODEL, "staging")) == [
            ("start", 2, 1.0, 4),
            ("rollback", 2, 1.0, 4),
        ]

    # ---- migration 0005 ------------------------------------------------------------

    async def test_0005_adds_the_canary_tables_on_0004_and_drops_them_down(
        self, db_settings: Settings
    ) -> None:
        assert await upgrade(db_settings, "0004") == "0004"
        assert await upgrade(db_settings, "0005") == "0005"
        engine = create_engine(db_settings)
        try:
            async with connect(engine, db_settings.platform_db_url()) as connection:
                assert await connection.run_sync(table_names) >= CANARY_TABLES
                after = await connection.run_sync(downgrade_to, "0004")
                await connection.commit()
        finally:
            await engine.dispose()
        assert not CANARY_TABLES & after
        assert {"model_aliases", "model_alias_history", "model_versions"} <= after
        assert await current_revision(db_settings) == "0004"
        assert await upgrade(db_settings, "0005") == "0005"  # and up again
