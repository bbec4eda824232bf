"""The platform database on the real PostgreSQL: the KeyStore contract and clear errors."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

from cluster.cli_keys import keys_app
from cluster.db.engine import check_database, create_engine, session_factory
from cluster.errors import ServiceUnavailableError
from cluster.security.keys import KeyStore
from cluster.security.rbac import Role
from cluster.settings import Settings
from tests.clock import FakeClock
from tests.contracts.keystore import KeyStoreContract

pytestmark = pytest.mark.integration


class TestKeyStoreOnPostgres(KeyStoreContract):
    @pytest.fixture
    def db_settings(self, data_dir: Path, postgres_url: str) -> Settings:
        return Settings(data_dir=data_dir, database_url=postgres_url)


async def test_check_database_passes(data_dir: Path, postgres_url: str) -> None:
    await check_database(Settings(data_dir=data_dir, database_url=postgres_url))


async def test_missing_database_says_it_does_not_exist(
    data_dir: Path, postgres_admin_dsn: str
) -> None:
    base = postgres_admin_dsn.rsplit("/", 1)[0].replace("postgresql://", "postgresql+asyncpg://")
    settings = Settings(data_dir=data_dir, database_url=f"{base}/datapunk_no_such_db")
    with pytest.raises(ServiceUnavailableError) as caught:
        await check_database(settings)
    assert caught.value.fields["reason"] == 'database "datapunk_no_such_db" does not exist'
    assert "createdb" in caught.value.message
    assert "\n" not in caught.value.message


async def test_unknown_role_is_named(data_dir: Path, postgres_admin_dsn: str) -> None:
    url = "postgresql+asyncpg://datapunk_no_such_role@127.0.0.1:5432/postgres"
    with pytest.raises(ServiceUnavailableError, match='role "datapunk_no_such_role"'):
        await check_database(Settings(data_dir=data_dir, database_url=url))


def test_cli_creates_a_key_in_postgres(
    postgres_url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("DATAPUNK_DATA_DIR", str(tmp_path / "state"))
    monkeypatch.setenv("DATAPUNK_DATABASE_URL", postgres_url)
    result = CliRunner().invoke(keys_app, ["create", "--role", "service", "--json"])
    assert result.exit_code == 0, result.output
    body = json.loads(result.stdout)

    async def authenticate() -> Role:
        engine = create_engine(Settings(database_url=postgres_url))
        try:
            store = KeyStore(session_factory(engine), FakeClock().now)
            return (await store.authenticate(body["key"])).role
        finally:
            await engine.dispose()

    assert asyncio.run(authenticate()) is Role.SERVICE
