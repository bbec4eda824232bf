"""The Forge stores' contract: training runs and the model registry on a platform database.

A backend's test module subclasses ``ForgeStoresContract`` and provides ``db_settings``:
settings whose platform database is fresh and empty (SQLite in unit tests, PostgreSQL in
integration tests). The registry is exercised through ``ModelRegistry`` with its
artifacts in the test's data directory, so what is checked is what callers get.
"""

from __future__ import annotations

import asyncio
from datetime import datetime, timedelta
from typing import Any

import pytest
from sqlalchemy.ext.asyncio import AsyncEngine

from actors.forge.artifacts import ArtifactIntegrityError, ArtifactStore, artifacts_root
from actors.forge.registry import ModelRegistry, registry_from_settings
from cluster.db.engine import create_engine
from cluster.db.forge_store import ForgeRunStore, RegistryStore, open_forge_stores
from cluster.errors import InvalidInputError, NotFoundError, PlatformStateError
from cluster.settings import Settings
from tests.clock import FakeClock
from tests.contracts.platform_db import PlatformDbContract

MODEL = "churn"
SPEC = {"model": {"kind": "mlp", "hidden": [32]}, "data": {"table": "sales.orders"}}
LINEAGE = {
    "table": "sales.orders",
    "snapshot_id": 7,
    "run_id": "run-1",
    "config_hash": "c" * 64,
    "code_version": "1.2.3",
}
SIGNATURE = {"inputs": {"x": "float32[4]"}, "outputs": {"y": "float32[1]"}}


def run_kwargs(**overrides: Any) -> dict[str, Any]:
    return {
        "name": "churn-mlp",
        "spec": SPEC,
        "config_hash": "a" * 64,
        "experiment_path": "/data/forge/experiments/churn-mlp/run-1",
        "lake_table": "sales.orders",
        "snapshot_id": 42,
        "created_by": "cli:ana",
        **overrides,
    }


async def register(registry: ModelRegistry, data: bytes = b"weights", **kw: Any) -> dict[str, Any]:
    name = kw.pop("name", MODEL)
    fields: dict[str, Any] = {
        "artifact": data,
        "model_spec": {"kind": "mlp"},
        "signature": SIGNATURE,
        "metrics": {"rmse": 0.5},
        "params": {"lr": 0.01},
        "tags": {"team": "growth"},
        "lineage": LINEAGE,
        "created_by": "job:train",
        **kw,
    }
    return await registry.register(name, **fields)


def scores(by_version: dict[int, float]) -> Any:
    """The injected evaluation: a fixed score per version, and the versions it scored."""
    seen: list[int] = []

    async def evaluate(record: dict[str, Any]) -> float:
        seen.append(record["version"])
        return by_version[record["version"]]

    evaluate.seen = seen  # type: ignore[attr-defined]
    return evaluate


class ForgeStoresContract(PlatformDbContract):
    """What the run store and the registry must do on every platform-database backend."""

    @pytest.fixture
    def runs(self, engine: AsyncEngine, clock: FakeClock) -> ForgeRunStore:
        return ForgeRunStore.from_engine(engine, clock.now)

    @pytest.fixture
    def registry(
        self, engine: AsyncEngine, clock: FakeClock, db_settings: Settings
    ) -> ModelRegistry:
        artifacts = ArtifactStore(artifacts_root(db_settings))
        return ModelRegistry(RegistryStore.from_engine(engine, clock.now), artifacts, clock.now)

    # ---- schema ----------------------------------------------------------------------

    async def test_an_unmigrated_database_says_to_upgrade(
        self, db_settings: Settings, clock: FakeClock
    ) -> None:
        engine = create_engine(db_settings)
        try:
            with pytest.raises(PlatformStateError, match="datapunk db upgrade"):
                await ForgeRunStore.from_engine(engine, clock.now).get("r")
            with pytest.raises(PlatformStateError, match="datapunk db upgrade"):
                await RegistryStore.from_engine(engine, clock.now).models()
        finally:
            await engine.dispose()

    async def test_open_forge_stores_and_registry_from_settings_migrate(
        self, db_settings: Settings, clock: FakeClock
    ) -> None:
        async with open_forge_stores(db_settings, clock.now) as stores:
            await stores.runs.start("run-1", **run_kwargs())
        async with registry_from_settings(db_settings, clock.now) as registry:
            await register(registry)
            assert [m["name"] for m in await registry.models()] == [MODEL]
            assert (artifacts_root(db_settings) / MODEL / "1" / "model.pt").read_bytes() == (
                b"weights"
            )
        async with open_forge_stores(db_settings, clock.now) as stores:
            assert (await stores.runs.list())[0]["run_id"] == "run-1"

    # ---- runs ------------------------------------------------------------------------

    async def test_start_records_a_running_run(self, runs: ForgeRunStore, clock: FakeClock) -> None:
        record = await runs.start("run-1", **run_kwargs())
        assert record == {
            "run_id": "run-1",
            **run_kwargs(),
            "state": "running",
            "results": None,
            "best": None,
            "model_name": None,
            "model_version": None,
            "error": None,
            "created_at": clock.now().isoformat(),
            "updated_at": clock.now().isoformat(),
        }
        assert await runs.get("run-1") == record
        assert await runs.get("nope") is None

    async def test_starting_again_resumes_with_the_pinned_snapshot(
        self, runs: ForgeRunStore, clock: FakeClock
    ) -> None:
        first = await runs.start("run-1", **run_kwargs())
        await runs.update("run-1", state="interrupted", results=[{"trial": 0, "rmse": 0.4}])
        clock.advance(60)
        again = await runs.start("run-1", **run_kwargs(snapshot_id=99, spec={"other": 1}))
        assert again["state"] == "running"
        assert (again["snapshot_id"], again["spec"]) == (42, SPEC)
        assert again["results"] == [{"trial": 0, "rmse": 0.4}]
        assert again["created_at"] == first["created_at"]
        assert again["updated_at"] == clock.now().isoformat()

    async def test_update_changes_known_columns_only(
        self, runs: ForgeRunStore, clock: FakeClock
    ) -> None:
        await runs.start("run-1", **run_kwargs())
        clock.advance(5)
        done = await runs.update(
            "run-1",
            state="succeeded",
            results=[{"trial": 0, "loss": float("nan")}, {"trial": 1, "loss": 0.2}],
            best={"trial": 1, "loss": 0.2},
            model_name=MODEL,
            model_version=3,
        )
        assert done["state"] == "succeeded"
        assert done["results"] == [{"trial": 0, "loss": None}, {"trial": 1, "loss": 0.2}]
        assert (done["model_name"], done["model_version"]) == (MODEL, 3)
        assert done["updated_at"] == clock.now().isoformat()
        assert await runs.get("run-1") == done
        failed = await runs.update("run-1", state="failed", error="boom" * 2000)
        assert len(failed["error"]) == 4000
        with pytest.raises(InvalidInputError, match="run_id"):
            await runs.update("run-1", run_id="other")
        with pytest.raises(InvalidInputError, match="pending, running, succeeded"):
            await runs.update("run-1", state="paused")
        with pytest.raises(NotFoundError, match="'ghost'"):
            await runs.update("ghost", state="failed")

    async def test_list_is_newest_first_and_filters_by_name(
        self, runs: ForgeRunStore, clock: FakeClock
    ) -> None:
        for index, name in enumerate(("a", "b", "a")):
            await runs.start(f"run-{index}", **run_kwargs(name=name))
            clock.advance(1)
        assert [r["run_id"] for r in await runs.list()] == ["run-2", "run-1", "run-0"]
        assert [r["run_id"] for r in await runs.list(name="a")] == ["run-2", "run-0"]
        assert [r["run_id"] for r in await runs.list(limit=1)] == ["run-2"]
        with pytest.raises(InvalidInputError, match="limit"):
            await runs.list(limit=0)

    async def test_bad_run_fields_are_refused(self, runs: ForgeRunStore) -> None:
        with pytest.raises(InvalidInputError, match="run_id"):
            await runs.start("", **run_kwargs())
        with pytest.raises(InvalidInputError, match="spec"):
            await runs.start("r", **run_kwargs(spec=["no"]))
        with pytest.raises(InvalidInputError, match="snapshot_id"):
            await runs.start("r", **run_kwargs(snapshot_id="7"))

    # ---- register --------------------------------------------------------------------

    async def test_versions_number_themselves_and_keep_their_fields(
        self, registry: ModelRegistry, clock: FakeClock
    ) -> None:
        first = await register(registry, b"v1", description="churn classifier")
        clock.advance(1)
        second = await register(registry, b"v2", metrics={"rmse": 0.4}, format="torchscript")
        assert (first["version"], second["version"]) == (1, 2)
        assert first["artifact_path"] == f"{MODEL}/1/model.pt"
        assert first["size"] == 2 and len(first["sha256"]) == 64
        assert second["format"] == "torchscript"
        assert second["lineage"] == LINEAGE and second["signature"] == SIGNATURE
        assert second["metrics"] == {"rmse": 0.4} and second["tags"] == {"team": "growth"}
        assert second["created_at"] == clock.now().isoformat()
        (model,) = await registry.models()
        assert model["description"] == "churn classifier"
        assert (model["latest_version"], model["version_count"], model["aliases"]) == (2, 2, {})
        assert [v["version"] for v in await registry.versions(MODEL)] == [1, 2]
        record, data = await registry.artifact(MODEL, 2)
        assert record == {**second, "aliases": []} and data == b"v2"

    async def test_concurrent_registrations_get_distinct_versions(
        self, registry: ModelRegistry
    ) -> None:
        payloads = [f"weights-{i}".encode() for i in range(6)]
        records = await asyncio.gather(*(register(registry, p) for p in payloads))
        assert sorted(r["version"] for r in records) == list(range(1, 7))
        for record, payload in zip(records, payloads, strict=True):
            assert (await registry.artifact(MODEL, record["version"]))[1] == payload

    async def test_a_tampered_artifact_is_refused_naming_the_file(
        self, registry: ModelRegistry
    ) -> None:
        await register(registry, b"good weights")
        path = registry.artifacts.path(f"{MODEL}/1/model.pt")
        path.write_bytes(b"evil weights")
        with pytest.raises(ArtifactIntegrityError, match=str(path)):
            await registry.artifact(MODEL, 1)
        path.unlink()
        with pytest.raises(NotFoundError, match="artifact file"):
            await registry.artifact(MODEL, 1)

    async def test_bad_names_lineage_and_metrics_are_refused(self, registry: ModelRegistry) -> None:
        for name in ("Churn", "1churn", "", "a" * 101, "churn/x"):
            with pytest.raises(InvalidInputError, match="model name"):
                await register(registry, name=name)
        lineage = {k: v for k, v in LINEAGE.items() if k not in ("run_id", "code_version")}
        with pytest.raises(InvalidInputError, match=r"missing \['run_id', 'code_version'\]"):
            await register(registry, lineage=lineage)
        with pytest.raises(InvalidInputError, match="metrics"):
            await register(registry, metrics={"rmse": float("nan")})
        with pytest.raises(InvalidInputError, match="format"):
            await register(registry, format="onnx")
        with pytest.raises(InvalidInputError, match="artifact"):
            await register(registry, b"")
        with pytest.raises(InvalidInputError, match="tags"):
            await register(registry, tags={"n": 1})
        assert await registry.models() == []

    # ---- look up ---------------------------------------------------------------------

    async def test_refs_are_numbers_digits_or_aliases(self, registry: ModelRegistry) -> None:
        for _ in range(3):
            await register(registry)
        await registry.set_alias(MODEL, "production", 2, actor="cli:ana")
        assert (await registry.version(MODEL, 3))["version"] == 3
        assert (await registry.version(MODEL, "1"))["version"] == 1
        production = await registry.version(MODEL, "production")
        assert (production["version"], production["aliases"]) == (2, ["production"])
        with pytest.raises(NotFoundError, match=r"versions: 1 to 3; aliases: production"):
            await registry.version(MODEL, "staging")
        with pytest.raises(NotFoundError, match="versions: 1 to 3"):
            await registry.version(MODEL, 9)
        with pytest.raises(NotFoundError, match=f"registered models: {MODEL}"):
            await registry.version("ghost", 1)
        with pytest.raises(NotFoundError, match="model 'ghost'"):
            await registry.model("ghost")

    # ---- aliases and their history ---------------------------------------------------

    async def test_alias_moves_are_history_and_alias_at_answers_for_any_time(
        self, registry: ModelRegistry, clock: FakeClock
    ) -> None:
        for _ in range(3):
            await register(registry)
        before = clock.now() - timedelta(seconds=1)
        t1 = clock.now()
        await registry.set_alias(MODEL, "production", 1, actor="cli:ana", reason="first")
        clock.advance(10)
        t2 = clock.now()
        moved = await registry.set_alias(MODEL, "production", 2, actor="cli:bo")
        assert (moved["version"], moved["previous_version"], moved["changed"]) == (2, 1, True)
        await registry.set_alias(MODEL, "staging", 3, actor="cli:bo")
        clock.advance(10)
        t3 = clock.now()
        await registry.remove_alias(MODEL, "production", actor="cli:cy")
        clock.advance(10)
        t4 = clock.now()
        await registry.set_alias(MODEL, "production", 3, actor="cli:cy")

        expected = {before: None, t1: 1, t1 + timedelta(seconds=5): 1, t2: 2, t3: None, t4: 3}
        for at, version in expected.items():
            assert await registry.alias_at(MODEL, "production", at) == version, at
        assert await registry.alias_at(MODEL, "staging", t2 + timedelta(seconds=1)) == 3
        assert await registry.alias_at(MODEL, "canary", t4) is None

        history = await registry.history(MODEL, "production")
        moves = [(e["from_version"], e["to_version"], e["actor"]) for e in history]
        assert moves == [
            (None, 1, "cli:ana"),
            (1, 2, "cli:bo"),
            (2, None, "cli:cy"),
            (None, 3, "cli:cy"),
        ]
        assert history[0]["reason"] == "first" and history[0]["at"] == t1.isoformat()
        assert len(await registry.history(MODEL)) == 5
        (model,) = await registry.models()
        assert model["aliases"] == {"production": 3, "staging": 3}

    async def test_setting_the_same_version_again_writes_no_history(
        self, registry: ModelRegistry
    ) -> None:
        await register(registry)
        await registry.set_alias(MODEL, "production", 1, actor="a")
        again = await registry.set_alias(MODEL, "production", 1, actor="b")
        assert (again["changed"], again["updated_by"]) == (False, "a")
        assert len(await registry.history(MODEL)) == 1

    async def test_bad_aliases_and_unknown_targets_are_refused(
        self, registry: ModelRegistry
    ) -> None:
        await register(registry)
        for alias in ("Prod", "", "a" * 51, "prod.x"):
            with pytest.raises(InvalidInputError, match="alias"):
                await registry.set_alias(MODEL, alias, 1, actor="a")
        with pytest.raises(NotFoundError, match="versions: 1 to 1"):
            await registry.set_alias(MODEL, "production", 5, actor="a")
        with pytest.raises(NotFoundError, match="aliases: none"):
            await registry.remove_alias(MODEL, "production", actor="a")
        with pytest.raises(InvalidInputError, match="aware"):
            await registry.alias_at(MODEL, "production", datetime(2026, 1, 1))
        assert await registry.history(MODEL) == []

    async def test_a_compare_and_set_refuses_an_alias_that_moved(
        self, registry: ModelRegistry
    ) -> None:
        for _ in range(3):
            await register(registry)
        await registry.set_alias(MODEL, "production", 2, actor="a")
        with pytest.raises(PlatformStateError, match="moved from version 1 to 2"):
            await registry.store.set_alias(MODEL, "production", 3, actor="b", expect_previous=1)
        assert (await registry.version(MODEL, "production"))["version"] == 2

    # ---- the promotion gate ----------------------------------------------------------

    async def test_promote_moves_the_alias_only_when_at_least_as_good(
        self, registry: ModelRegistry
    ) -> None:
        for _ in range(3):
            await register(registry)
        evaluate = scores({1: 0.80, 2: 0.75, 3: 0.80})
        first = await registry.promote(
            MODEL, "production", 1, evaluate=evaluate, metric="auc", mode="max", actor="a"
        )
        assert first["promoted"] and first["incumbent_version"] is None
        assert first["why"] == "no version holds the alias"

        worse = await registry.promote(
            MODEL, "production", 2, evaluate=evaluate, metric="auc", mode="max", actor="a"
        )
        assert {k: worse[k] for k in worse if k not in ("why", "decided_at")} == {
            "name": MODEL,
            "promoted": False,
            "alias": "production",
            "candidate_version": 2,
            "candidate_score": 0.75,
            "incumbent_version": 1,
            "incumbent_score": 0.80,
            "metric": "auc",
            "mode": "max",
        }
        assert (await registry.version(MODEL, "production"))["version"] == 1

        tie = await registry.promote(
            MODEL, "production", 3, evaluate=evaluate, metric="auc", mode="max", actor="b"
        )
        assert tie["promoted"] and "at least as good" in tie["why"]
        assert (await registry.version(MODEL, "production"))["version"] == 3
        assert evaluate.seen == [1, 2, 1, 3, 1]
        history = await registry.history(MODEL, "production")
        assert [e["to_version"] for e in history] == [1, 3]  # the refusal moved nothing
        assert history[-1]["reason"].startswith("promotion gate on auc")

    async def test_promote_in_min_mode_and_a_nan_candidate(self, registry: ModelRegistry) -> None:
        for _ in range(3):
            await register(registry)
        await registry.set_alias(MODEL, "production", 1, actor="a")
        evaluate = scores({1: 0.30, 2: 0.25, 3: float("nan")})
        better = await registry.promote(
            MODEL, "production", 2, evaluate=evaluate, metric="rmse", mode="min", actor="a"
        )
        assert better["promoted"] and better["incumbent_score"] == 0.30
        nan = await registry.promote(
            MODEL, "production", 3, evaluate=evaluate, metric="rmse", mode="min", actor="a"
        )
        assert not nan["promoted"] and nan["candidate_score"] is None
        assert nan["why"] == "the candidate scored NaN"
        assert (await registry.version(MODEL, "production"))["version"] == 2
        with pytest.raises(InvalidInputError, match="mode"):
            await registry.promote(
                MODEL,
                "production",
                1,
                evaluate=evaluate,
                metric="rmse",
                mode="best",  # type: ignore[arg-type]
                actor="a",
            )
