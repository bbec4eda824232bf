"""The model registry and Forge run records on SQLite (no Ray), the promotion gate as a
pure function, artifact files, and migration 0004 up and down."""

from __future__ import annotations

import math
from pathlib import Path

import pytest

from actors.forge.artifacts import ArtifactIntegrityError, ArtifactStore, sha256
from actors.forge.gate import gate
from cluster.db.engine import connect, create_engine
from cluster.db.migrate import ensure_schema, head_revision, upgrade
from cluster.errors import InvalidInputError
from cluster.settings import Settings
from tests.contracts.forge_store import ForgeStoresContract
from tests.contracts.platform_db import downgrade_to, table_names

NAN = math.nan
FORGE_TABLES = {"forge_runs", "models", "model_versions", "model_aliases", "model_alias_history"}


class TestForgeStoresOnSqlite(ForgeStoresContract):
    @pytest.fixture
    def db_settings(self, data_dir: Path) -> Settings:
        return Settings(data_dir=data_dir)


# ---- the gate -------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("candidate", "incumbent", "mode", "passes"),
    [
        (0.9, 0.8, "max", True),
        (0.8, 0.8, "max", True),
        (0.7, 0.8, "max", False),
        (0.1, 0.2, "min", True),
        (0.2, 0.2, "min", True),
        (0.3, 0.2, "min", False),
        (0.3, None, "min", True),
        (0.3, None, "max", True),
        (NAN, None, "max", False),
        (NAN, 0.2, "min", False),
        (0.3, NAN, "min", True),
        (-math.inf, 0.0, "max", False),
    ],
)
def test_gate_is_at_least_as_good(
    candidate: float, incumbent: float | None, mode: str, passes: bool
) -> None:
    assert gate(candidate, incumbent, mode) is passes  # type: ignore[arg-type]


def test_gate_refuses_an_unknown_mode() -> None:
    with pytest.raises(InvalidInputError, match="min or max"):
        gate(1.0, 0.5, "best")  # type: ignore[arg-type]


# ---- artifact files -------------------------------------------------------------------


async def test_artifacts_are_written_whole_and_verified(tmp_path: Path) -> None:
    store = ArtifactStore(tmp_path / "artifacts")
    digest = await store.write("churn", 3, b"weights")
    assert digest == sha256(b"weights")
    path = tmp_path / "artifacts" / "churn" / "3" / "model.pt"
    assert path.read_bytes() == b"weights"
    assert [p.name for p in path.parent.iterdir()] == ["model.pt"]  # no temp file left
    await store.write("churn", 3, b"again")  # replaced whole
    assert await store.read("churn/3/model.pt", sha256(b"again")) == b"again"
    with pytest.raises(ArtifactIntegrityError, match=r"model\.pt has sha256"):
        await store.read("churn/3/model.pt", digest)


@pytest.mark.parametrize("relative", ["../x/model.pt", "/etc/passwd", ""])
def test_artifact_paths_stay_under_the_root(tmp_path: Path, relative: str) -> None:
    with pytest.raises(ValueError, match="must stay under"):
        ArtifactStore(tmp_path).path(relative)


# ---- migration 0004 -------------------------------------------------------------------


async def test_a_database_at_0003_gains_the_forge_tables_and_loses_them_down(
    data_dir: Path,
) -> None:
    settings = Settings(data_dir=data_dir)
    assert await upgrade(settings, "0003") == "0003"
    assert await ensure_schema(settings) == head_revision()
    engine = create_engine(settings)
    try:
        async with connect(engine, settings.platform_db_url()) as connection:
            assert await connection.run_sync(table_names) >= FORGE_TABLES
            after = await connection.run_sync(downgrade_to, "0003")
            await connection.commit()
    finally:
        await engine.dispose()
    assert not FORGE_TABLES & after
    assert {"api_keys", "stream_topologies", "stream_checkpoints"} <= after
