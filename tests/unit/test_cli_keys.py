"""`datapunk keys` and `datapunk db` through Typer's test runner, on a SQLite data dir."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path
from typing import Annotated, Any

import pytest
import typer
from typer.testing import CliRunner

from cluster.cli_keys import db_app, keys_app
from cluster.db.engine import create_engine, session_factory
from cluster.db.migrate import head_revision
from cluster.errors import AuthenticationError
from cluster.security.keys import KeyStore
from cluster.security.principal import Principal
from cluster.security.rbac import Role
from cluster.settings import Settings
from tests.clock import FakeClock

app = typer.Typer()


@app.callback()
def _root(
    ctx: typer.Context,
    config: Annotated[Path | None, typer.Option("--config")] = None,
) -> None:
    ctx.obj = {"config_path": config}


app.add_typer(keys_app, name="keys")
app.add_typer(db_app, name="db")


@pytest.fixture
def runner(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> CliRunner:
    monkeypatch.chdir(tmp_path)  # no configs/datapunk.yaml here
    monkeypatch.setenv("DATAPUNK_DATA_DIR", str(tmp_path / "state"))
    return CliRunner()


def invoke(runner: CliRunner, *args: str) -> Any:
    return runner.invoke(app, list(args), catch_exceptions=False)


async def _authenticate(data_dir: Path, token: str) -> Principal:
    engine = create_engine(Settings(data_dir=data_dir))
    try:
        return await KeyStore(session_factory(engine), FakeClock().now).authenticate(token)
    finally:
        await engine.dispose()


def test_db_upgrade_then_current(runner: CliRunner) -> None:
    result = invoke(runner, "db", "current")
    assert result.exit_code == 0, result.output
    assert "not initialised" in result.stdout
    for _ in range(2):
        result = invoke(runner, "db", "upgrade")
        assert result.exit_code == 0, result.output
        assert f"revision {head_revision()}" in result.stdout
    result = invoke(runner, "db", "current")
    assert f"revision {head_revision()} (head)" in result.stdout


def test_create_json_prints_a_key_that_authenticates(runner: CliRunner, tmp_path: Path) -> None:
    result = invoke(runner, "keys", "create", "--role", "engineer", "--name", "ci", "--json")
    assert result.exit_code == 0, result.output
    body = json.loads(result.stdout)  # stdout is exactly one JSON object
    assert set(body) == {"id", "key", "role", "name", "expires_at"}
    assert (body["role"], body["name"], body["expires_at"]) == ("engineer", "ci", None)
    principal = asyncio.run(_authenticate(tmp_path / "state", body["key"]))
    assert principal == Principal(key_id=body["id"], name="ci", role=Role.ENGINEER)


def test_create_shows_the_key_once_with_a_warning(runner: CliRunner, tmp_path: Path) -> None:
    result = invoke(runner, "keys", "create", "--role", "admin", "--expires-in-days", "7")
    assert result.exit_code == 0, result.output
    token = next(line for line in result.stdout.splitlines() if line.startswith("dp_"))
    assert "will not be shown again" in result.stdout
    assert "expires 20" in result.stdout
    principal = asyncio.run(_authenticate(tmp_path / "state", token))
    assert principal.role is Role.ADMIN
    listing = invoke(runner, "keys", "ls")
    assert token not in listing.output
    assert token[:10] in listing.stdout


def test_ls_shows_no_digest_and_revoke_hides_the_key(runner: CliRunner, tmp_path: Path) -> None:
    created = json.loads(invoke(runner, "keys", "create", "--role", "analyst", "--json").stdout)
    table = invoke(runner, "keys", "ls")
    assert table.exit_code == 0, table.output
    assert created["id"] in table.stdout and "active" in table.stdout
    assert created["key"] not in table.stdout
    rows = json.loads(invoke(runner, "keys", "ls", "--json").stdout)
    assert [r["id"] for r in rows] == [created["id"]]
    assert "digest" not in rows[0] and created["key"] not in json.dumps(rows)

    revoked = invoke(runner, "keys", "revoke", created["id"])
    assert revoked.exit_code == 0, revoked.output
    assert f"Revoked {created['id']}" in revoked.stdout
    assert json.loads(invoke(runner, "keys", "ls", "--json").stdout) == []
    everything = json.loads(invoke(runner, "keys", "ls", "--all", "--json").stdout)
    assert [r["status"] for r in everything] == ["revoked"]
    with pytest.raises(AuthenticationError, match="revoked"):
        asyncio.run(_authenticate(tmp_path / "state", created["key"]))


def test_bad_role_exits_2_naming_the_allowed_roles(runner: CliRunner) -> None:
    result = invoke(runner, "keys", "create", "--role", "superuser")
    assert result.exit_code == 2
    assert result.stdout == ""
    assert result.stderr.startswith("error: invalid role='superuser'")
    assert "admin, engineer, analyst, service" in result.stderr
    assert "Traceback" not in result.output


def test_revoking_an_unknown_key_exits_2(runner: CliRunner) -> None:
    result = invoke(runner, "keys", "revoke", "key_000000000000")
    assert result.exit_code == 2
    assert "API key 'key_000000000000' does not exist" in result.stderr


def test_unreachable_database_is_one_line_and_exit_2(
    runner: CliRunner, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("DATAPUNK_DATABASE_URL", "postgresql+asyncpg://nobody@127.0.0.1:1/x")
    for args in (("keys", "ls"), ("db", "upgrade"), ("db", "current")):
        result = invoke(runner, *args)
        assert result.exit_code == 2
        lines = result.stderr.strip().splitlines()
        assert len(lines) == 1, result.stderr
        assert "platform database at postgresql+asyncpg://nobody@127.0.0.1:1/x" in lines[0]
        assert "connection refused" in lines[0]


def test_bad_setting_is_one_line_and_exit_2(
    runner: CliRunner, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("DATAPUNK_DATABASE_URL", "mysql://x@y/z")
    result = invoke(runner, "keys", "ls")
    assert result.exit_code == 2
    assert result.stderr.startswith("error: invalid setting database_url")


def test_config_path_from_the_main_app_is_used(
    runner: CliRunner, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("DATAPUNK_DATA_DIR")
    config = tmp_path / "custom.yaml"
    config.write_text(f"data_dir: {tmp_path / 'from-yaml'}\n")
    result = invoke(runner, "--config", str(config), "db", "upgrade")
    assert result.exit_code == 0, result.output
    assert (tmp_path / "from-yaml" / "platform.db").is_file()
