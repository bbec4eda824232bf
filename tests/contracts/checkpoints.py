"""The ``CheckpointStore`` contract, and the stream stores on a platform database.

``CheckpointStoreContract`` runs against every ``CheckpointStore``: a subclass provides
``checkpoints``. ``StreamStoresContract`` adds what the SQL stores must do on a
platform-database backend (SQLite in unit tests, PostgreSQL in integration tests): a
subclass provides ``db_settings``, settings whose platform database is fresh and empty.
"""

from __future__ import annotations

import os
from datetime import timedelta

import pytest
from sqlalchemy.ext.asyncio import AsyncEngine

from actors.stream.ports import CheckpointStore
from cluster.db.engine import create_engine, session_factory
from cluster.db.stream_store import (
    SqlCheckpointStore,
    TopologyStore,
    open_stream_stores,
)
from cluster.errors import InvalidInputError, NotFoundError, PlatformStateError
from cluster.settings import Settings
from tests.clock import FakeClock
from tests.contracts.platform_db import PlatformDbContract

TOPOLOGY = "clicks"
SPEC = {"source": {"kind": "rabbitmq", "queue": "clicks"}, "operators": [{"window": "1m"}]}


class CheckpointStoreContract:
    """What every ``CheckpointStore`` must do."""

    @pytest.fixture
    def checkpoints(self) -> CheckpointStore:
        raise NotImplementedError("a backend's test class provides checkpoints")

    async def test_nothing_saved_is_none(self, checkpoints: CheckpointStore) -> None:
        assert await checkpoints.latest(TOPOLOGY) is None

    async def test_save_then_latest(self, checkpoints: CheckpointStore) -> None:
        await checkpoints.save(TOPOLOGY, 1, b"state-1")
        assert await checkpoints.latest(TOPOLOGY) == (1, b"state-1")

    async def test_the_newest_epoch_wins_whatever_the_order(
        self, checkpoints: CheckpointStore
    ) -> None:
        for epoch in (1, 3, 2):
            await checkpoints.save(TOPOLOGY, epoch, f"state-{epoch}".encode())
        assert await checkpoints.latest(TOPOLOGY) == (3, b"state-3")

    async def test_saving_an_epoch_again_replaces_it(self, checkpoints: CheckpointStore) -> None:
        await checkpoints.save(TOPOLOGY, 4, b"first")
        await checkpoints.save(TOPOLOGY, 4, b"second")
        assert await checkpoints.latest(TOPOLOGY) == (4, b"second")
        assert await checkpoints.prune(TOPOLOGY, 0) == 1  # one row, not two

    async def test_payloads_come_back_as_bytes(self, checkpoints: CheckpointStore) -> None:
        await checkpoints.save(TOPOLOGY, 1, b"\x00\xffbinary\x00")
        latest = await checkpoints.latest(TOPOLOGY)
        assert latest is not None
        assert type(latest[1]) is bytes and latest[1] == b"\x00\xffbinary\x00"

    async def test_empty_payload(self, checkpoints: CheckpointStore) -> None:
        await checkpoints.save(TOPOLOGY, 0, b"")
        assert await checkpoints.latest(TOPOLOGY) == (0, b"")

    async def test_prune_keeps_the_newest(self, checkpoints: CheckpointStore) -> None:
        for epoch in range(1, 6):
            await checkpoints.save(TOPOLOGY, epoch, b"x")
        assert await checkpoints.prune(TOPOLOGY, 2) == 3
        assert await checkpoints.latest(TOPOLOGY) == (5, b"x")
        assert await checkpoints.prune(TOPOLOGY, 2) == 0
        assert await checkpoints.prune(TOPOLOGY, 1) == 1
        assert await checkpoints.latest(TOPOLOGY) == (5, b"x")
        assert await checkpoints.prune(TOPOLOGY, 0) == 1
        assert await checkpoints.latest(TOPOLOGY) is None

    async def test_prune_keeping_more_than_saved_deletes_nothing(
        self, checkpoints: CheckpointStore
    ) -> None:
        await checkpoints.save(TOPOLOGY, 7, b"x")
        assert await checkpoints.prune(TOPOLOGY, 10) == 0
        assert await checkpoints.prune("never-saved", 1) == 0
        assert await checkpoints.latest(TOPOLOGY) == (7, b"x")

    async def test_drop_deletes_every_checkpoint(self, checkpoints: CheckpointStore) -> None:
        for epoch in range(3):
            await checkpoints.save(TOPOLOGY, epoch, b"x")
        assert await checkpoints.drop(TOPOLOGY) == 3
        assert await checkpoints.latest(TOPOLOGY) is None
        assert await checkpoints.drop(TOPOLOGY) == 0
        await checkpoints.save(TOPOLOGY, 0, b"fresh")  # a fresh deploy starts over
        assert await checkpoints.latest(TOPOLOGY) == (0, b"fresh")

    async def test_topologies_are_isolated(self, checkpoints: CheckpointStore) -> None:
        await checkpoints.save("a", 5, b"a5")
        await checkpoints.save("b", 1, b"b1")
        await checkpoints.save("b", 2, b"b2")
        assert await checkpoints.latest("a") == (5, b"a5")
        assert await checkpoints.prune("b", 0) == 2
        assert await checkpoints.latest("a") == (5, b"a5")
        await checkpoints.save("b", 9, b"b9")
        assert await checkpoints.drop("a") == 1
        assert await checkpoints.latest("b") == (9, b"b9")

    async def test_a_large_payload_round_trips(self, checkpoints: CheckpointStore) -> None:
        payload = os.urandom(5 * 1024 * 1024)
        await checkpoints.save(TOPOLOGY, 1, payload)
        assert await checkpoints.latest(TOPOLOGY) == (1, payload)


class StreamStoresContract(PlatformDbContract, CheckpointStoreContract):
    """The SQL checkpoint store and the topology store on one platform-database backend."""

    @pytest.fixture
    def checkpoints(self, engine: AsyncEngine, clock: FakeClock) -> SqlCheckpointStore:
        return SqlCheckpointStore.from_engine(engine, clock.now)

    @pytest.fixture
    def topologies(self, engine: AsyncEngine, clock: FakeClock) -> TopologyStore:
        return TopologyStore(session_factory(engine), clock.now)

    # ---- checkpoints: what only the SQL store promises ---------------------------

    async def test_an_unmigrated_database_says_to_upgrade(
        self, db_settings: Settings, clock: FakeClock
    ) -> None:
        engine = create_engine(db_settings)
        try:
            store = SqlCheckpointStore.from_engine(engine, clock.now)
            with pytest.raises(PlatformStateError, match="datapunk db upgrade"):
                await store.latest(TOPOLOGY)
        finally:
            await engine.dispose()

    async def test_bad_epochs_and_keeps_are_refused(self, checkpoints: SqlCheckpointStore) -> None:
        for epoch in (-1, 2**63, True, 1.5):
            with pytest.raises(InvalidInputError, match="epoch"):
                await checkpoints.save(TOPOLOGY, epoch, b"x")  # type: ignore[arg-type]
        with pytest.raises(InvalidInputError, match="keep"):
            await checkpoints.prune(TOPOLOGY, -1)
        with pytest.raises(InvalidInputError, match="topology"):
            await checkpoints.save("x" * 201, 1, b"x")

    async def test_the_largest_epoch_fits(self, checkpoints: SqlCheckpointStore) -> None:
        await checkpoints.save(TOPOLOGY, 2**63 - 1, b"x")
        await checkpoints.save(TOPOLOGY, 2**40, b"y")
        assert await checkpoints.latest(TOPOLOGY) == (2**63 - 1, b"x")
        assert await checkpoints.epochs(TOPOLOGY) == [2**40, 2**63 - 1]

    async def test_open_stream_stores_migrates_and_disposes(
        self, db_settings: Settings, clock: FakeClock
    ) -> None:
        async with open_stream_stores(db_settings, clock.now) as stores:
            await stores.checkpoints.save(TOPOLOGY, 1, b"x")
            await stores.topologies.put(TOPOLOGY, SPEC)
        async with open_stream_stores(db_settings, clock.now) as stores:
            assert await stores.checkpoints.latest(TOPOLOGY) == (1, b"x")
            assert [t["name"] for t in await stores.topologies.list()] == [TOPOLOGY]

    # ---- topologies ----------------------------------------------------------------

    async def test_put_deploys_a_topology(
        self, topologies: TopologyStore, clock: FakeClock
    ) -> None:
        record = await topologies.put(TOPOLOGY, SPEC, created_by="cli:ana")
        assert record == {
            "name": TOPOLOGY,
            "spec": SPEC,
            "status": "deployed",
            "created_at": clock.now().isoformat(),
            "updated_at": clock.now().isoformat(),
            "created_by": "cli:ana",
            "error": None,
        }
        assert await topologies.get(TOPOLOGY) == record

    async def test_unknown_topology_is_none(self, topologies: TopologyStore) -> None:
        assert await topologies.get("nope") is None
        assert await topologies.list() == []

    async def test_put_again_replaces_the_spec_and_redeploys(
        self, topologies: TopologyStore, clock: FakeClock
    ) -> None:
        first = await topologies.put(TOPOLOGY, SPEC, created_by="cli:ana")
        await topologies.set_status(TOPOLOGY, "failed", "broker gone")
        clock.advance(60)
        spec = {**SPEC, "operators": []}
        again = await topologies.put(TOPOLOGY, spec, created_by="cli:bo")
        assert again["spec"] == spec
        assert (again["status"], again["error"]) == ("deployed", None)
        assert again["created_at"] == first["created_at"]
        assert again["created_by"] == "cli:ana"
        assert again["updated_at"] == clock.now().isoformat()
        assert await topologies.get(TOPOLOGY) == again
        assert len(await topologies.list()) == 1

    async def test_list_is_by_name(self, topologies: TopologyStore) -> None:
        for name in ("b", "c", "a"):
            await topologies.put(name, {"name": name})
        listed = await topologies.list()
        assert [t["name"] for t in listed] == ["a", "b", "c"]
        assert [t["spec"] for t in listed] == [{"name": "a"}, {"name": "b"}, {"name": "c"}]

    async def test_set_status_records_progress_and_errors(
        self, topologies: TopologyStore, clock: FakeClock
    ) -> None:
        await topologies.put(TOPOLOGY, SPEC)
        clock.advance(5)
        running = await topologies.set_status(TOPOLOGY, "running")
        assert (running["status"], running["error"]) == ("running", None)
        assert running["updated_at"] == clock.now().isoformat()
        failed = await topologies.set_status(TOPOLOGY, "failed", error="boom" * 2000)
        assert failed["status"] == "failed" and len(failed["error"]) == 4000
        stopped = await topologies.set_status(TOPOLOGY, "stopped")
        assert stopped["error"] is None
        assert await topologies.get(TOPOLOGY) == stopped

    async def test_set_status_of_an_unknown_topology_is_not_found(
        self, topologies: TopologyStore
    ) -> None:
        with pytest.raises(NotFoundError, match="'ghost'"):
            await topologies.set_status("ghost", "running")

    async def test_unknown_status_is_refused(self, topologies: TopologyStore) -> None:
        await topologies.put(TOPOLOGY, SPEC)
        with pytest.raises(InvalidInputError, match="deployed, running, stopped"):
            await topologies.set_status(TOPOLOGY, "paused")

    async def test_bad_names_and_specs_are_refused(self, topologies: TopologyStore) -> None:
        with pytest.raises(InvalidInputError, match="topology"):
            await topologies.put("", SPEC)
        with pytest.raises(InvalidInputError, match="spec"):
            await topologies.put(TOPOLOGY, ["not", "a", "dict"])  # type: ignore[arg-type]

    async def test_delete_forgets_the_topology_not_its_checkpoints(
        self, topologies: TopologyStore, checkpoints: SqlCheckpointStore
    ) -> None:
        await topologies.put(TOPOLOGY, SPEC)
        await checkpoints.save(TOPOLOGY, 3, b"x")
        assert await topologies.delete(TOPOLOGY) is True
        assert await topologies.get(TOPOLOGY) is None
        assert await topologies.delete(TOPOLOGY) is False
        assert await checkpoints.latest(TOPOLOGY) == (3, b"x")

    async def test_times_are_utc_iso(self, topologies: TopologyStore, clock: FakeClock) -> None:
        clock.advance(timedelta(hours=1).total_seconds())
        record = await topologies.put(TOPOLOGY, SPEC)
        assert record["created_at"] == clock.now().isoformat()
        assert record["created_at"].endswith("+00:00")
