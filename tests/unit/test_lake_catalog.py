"""Where the Iceberg catalog lives, and how it is opened."""

from __future__ import annotations

from pathlib import Path

import pytest
from sqlalchemy import text

from actors.lake.catalog import catalog_uri, open_catalog, warehouse_uri
from actors.lake.core import LakeCore
from cluster.errors import ServiceUnavailableError
from cluster.settings import load_settings


def test_the_default_catalog_is_a_sqlite_file_in_the_data_dir(tmp_path: Path) -> None:
    settings = load_settings(data_dir=tmp_path)
    assert catalog_uri(settings) == f"sqlite:///{tmp_path.resolve()}/lake/catalog.db"
    assert warehouse_uri(settings) == f"file://{tmp_path.resolve()}/lake/warehouse"


@pytest.mark.parametrize(
    "url",
    [
        "postgresql://dp:secret@db.example:5432/datapunk",
        "postgresql+asyncpg://dp:secret@db.example:5432/datapunk",
    ],
)
def test_a_postgres_platform_db_hosts_the_catalog_through_psycopg2(
    tmp_path: Path, url: str
) -> None:
    settings = load_settings(data_dir=tmp_path, database_url=url)
    assert catalog_uri(settings) == (
        "postgresql+psycopg2://dp:secret@db.example:5432/datapunk?connect_timeout=10"
    )


def test_a_sqlite_platform_db_leaves_the_catalog_in_its_own_file(tmp_path: Path) -> None:
    settings = load_settings(data_dir=tmp_path, database_url="sqlite:///elsewhere.db")
    assert catalog_uri(settings).endswith("/lake/catalog.db")


def test_the_catalog_url_wins_and_keeps_its_own_query(tmp_path: Path) -> None:
    settings = load_settings(
        data_dir=tmp_path,
        database_url="postgresql://a@platform/db",
        catalog_url="postgresql+asyncpg://b@catalog/lake?ssl=require&connect_timeout=3",
    )
    assert catalog_uri(settings) == (
        "postgresql+psycopg2://b@catalog/lake?connect_timeout=3&sslmode=require"
    )
    sqlite = load_settings(data_dir=tmp_path, catalog_url="sqlite:////srv/lake.db")
    assert catalog_uri(sqlite) == "sqlite:////srv/lake.db"


def test_the_sqlite_catalog_waits_for_locks_and_uses_wal(tmp_path: Path) -> None:
    catalog = open_catalog(load_settings(data_dir=tmp_path))
    with catalog.engine.connect() as connection:
        assert connection.execute(text("PRAGMA busy_timeout")).scalar() == 30_000
        assert connection.execute(text("PRAGMA journal_mode")).scalar() == "wal"
    assert (tmp_path / "lake" / "warehouse").is_dir()


def test_an_unreachable_catalog_is_one_line_without_the_password(tmp_path: Path) -> None:
    settings = load_settings(
        data_dir=tmp_path, catalog_url="postgresql://dp:hunter2@127.0.0.1:1/lake"
    )
    with pytest.raises(ServiceUnavailableError) as info:
        open_catalog(settings)
    message = info.value.message
    assert "\n" not in message
    assert "hunter2" not in message and "127.0.0.1:1" in message
    assert "DATAPUNK_CATALOG_URL" in message


def test_the_core_opens_the_catalog_only_when_a_table_is_used(tmp_path: Path) -> None:
    settings = load_settings(data_dir=tmp_path, catalog_url="postgresql://x@127.0.0.1:1/lake")
    lake = LakeCore(settings, index=0)
    assert lake.health()["status"] == "ok"
    with pytest.raises(ServiceUnavailableError):
        lake.list_tables()
