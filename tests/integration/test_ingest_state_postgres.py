"""Ingest bookkeeping on the real PostgreSQL: the same contract as on SQLite."""

from __future__ import annotations

from pathlib import Path

import pytest

from cluster.settings import Settings
from tests.contracts.ingest_state import IngestStateContract

pytestmark = pytest.mark.integration


class TestIngestStateOnPostgres(IngestStateContract):
    @pytest.fixture
    def db_settings(self, data_dir: Path, postgres_url: str) -> Settings:
        return Settings(data_dir=data_dir, database_url=postgres_url)
