"""Forge runs, the model registry and its canaries on the real PostgreSQL: the same
contracts as SQLite."""

from __future__ import annotations

from pathlib import Path

import pytest

from cluster.settings import Settings
from tests.contracts.canaries import CanaryContract
from tests.contracts.forge_store import ForgeStoresContract

pytestmark = pytest.mark.integration


class TestForgeStoresOnPostgres(ForgeStoresContract):
    @pytest.fixture
    def db_settings(self, data_dir: Path, postgres_url: str) -> Settings:
        return Settings(data_dir=data_dir, database_url=postgres_url)


class TestCanariesOnPostgres(CanaryContract):
    @pytest.fixture
    def db_settings(self, data_dir: Path, postgres_url: str) -> Settings:
        return Settings(data_dir=data_dir, database_url=postgres_url)
