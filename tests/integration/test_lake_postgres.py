"""The Lake contract on the production catalog: PostgreSQL (a fresh database per test)."""

from __future__ import annotations

from pathlib import Path

import pytest

from actors.lake.catalog import catalog_uri
from actors.lake.core import LakeCore
from cluster.errors import ServiceUnavailableError
from cluster.settings import load_settings
from tests.contracts.lake import LakeContract

pytestmark = pytest.mark.integration


class TestLakeOnPostgres(LakeContract):
    @pytest.fixture
    def lake(self, tmp_path: Path, postgres_url: str) -> LakeCore:
        settings = load_settings(data_dir=tmp_path, catalog_url=postgres_url)
        assert catalog_uri(settings).startswith("postgresql+psycopg2://")
        return LakeCore(settings, index=0, sleep=lambda _s: None)


def test_the_platform_database_hosts_the_catalog_when_no_catalog_url(
    tmp_path: Path, postgres_url: str
) -> None:
    settings = load_settings(data_dir=tmp_path, database_url=postgres_url)
    lake = LakeCore(settings, index=0)
    lake.create_namespace("sales")
    assert LakeCore(settings, index=1).list_namespaces() == ["sales"]
    assert not (tmp_path / "lake" / "catalog.db").exists()


def test_an_unknown_database_is_reported_on_one_line(tmp_path: Path, postgres_url: str) -> None:
    missing = postgres_url.rsplit("/", 1)[0] + "/datapunk_no_such_db"
    lake = LakeCore(load_settings(data_dir=tmp_path, catalog_url=missing), index=0)
    with pytest.raises(ServiceUnavailableError) as info:
        lake.list_tables()
    assert "\n" not in info.value.message
    assert "datapunk_no_such_db" in info.value.message
