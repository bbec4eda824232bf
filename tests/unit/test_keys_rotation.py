"""API-key rotation: the overlap works and then ends, in the store, the gateway's auth
cache, the REST route and `datapunk keys rotate`."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from datetime import timedelta
from pathlib import Path
from typing import Annotated, Any

import pytest
import typer
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncSession
from typer.testing import CliRunner

from cluster.cli_keys import keys_app, parse_duration
from cluster.db.engine import create_engine, session_factory
from cluster.db.migrate import upgrade
from cluster.errors import AuthenticationError, InvalidInputError, NotFoundError, PlatformStateError
from cluster.security.auth_cache import CachedAuthenticator
from cluster.security.keys import KeyStore
from cluster.security.rbac import Role
from cluster.settings import Settings
from tests.clock import FakeClock
from tests.unit.gateway_support import error_of, key_store
from tests.unit.identity_support import Identity, bearer, client, identity, identity_settings

HOUR = timedelta(hours=1)


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture
async def store(data_dir: Path, clock: FakeClock) -> AsyncIterator[KeyStore]:
    async with key_store(Settings(data_dir=data_dir), clock) as value:
        yield value


# ---- the store -------------------------------------------------------------------------


async def test_both_keys_work_during_the_overlap_then_the_old_one_stops(
    store: KeyStore, clock: FakeClock
) -> None:
    old_token, old = await store.create(Role.ENGINEER, "ci")
    clock.advance(60)
    new, new_token = await store.rotate(old.id, overlap=HOUR, actor="cli:ops")
    assert new_token.startswith("dp_") and new_token != old_token
    assert (new.name, new.role, new.replaces) == ("ci", Role.ENGINEER, old.id)
    during = await store.authenticate(old_token)
    assert during.expires_at == clock.now() + HOUR  # so caches stop trusting it then
    clock.advance(HOUR.total_seconds() - 1)
    await store.authenticate(old_token)
    await store.authenticate(new_token)
    clock.advance(1)
    with pytest.raises(AuthenticationError) as caught:
        await store.authenticate(old_token)
    rotated_at = (clock.now() - HOUR).isoformat(timespec="seconds")
    ended_at = clock.now().isoformat(timespec="seconds")
    message = caught.value.message
    assert f"was rotated at {rotated_at}" in message
    assert f"stopped working at {ended_at}" in message and new.id in message
    assert old_token not in message
    assert (await store.authenticate(new_token)).key_id == new.id


async def test_rotation_records_which_key_replaced_which(store: KeyStore, clock: FakeClock) -> None:
    _, old = await store.create(Role.SERVICE, "ingest", expires_in=timedelta(days=30))
    clock.advance(86_400)
    new, _ = await store.rotate(old.id, overlap=HOUR, actor="key_admin")
    by_id = {r.id: r for r in await store.list(include_revoked=True)}
    assert by_id[old.id].replaced_by == new.id
    assert by_id[old.id].rotated_at == clock.now()
    assert by_id[old.id].status(clock.now()) == "rotating"
    assert by_id[new.id].replaces == old.id and by_id[new.id].created_by == "key_admin"
    # The successor gets the same lifetime, counted from the rotation.
    assert by_id[new.id].expires_at == clock.now() + timedelta(days=30)
    clock.advance(HOUR.total_seconds())
    assert by_id[old.id].status(clock.now()) == "rotated"


async def test_overlap_never_extends_a_key_past_its_own_expiry(
    store: KeyStore, clock: FakeClock
) -> None:
    token, old = await store.create(Role.SERVICE, expires_in=timedelta(minutes=10))
    await store.rotate(old.id, overlap=timedelta(days=1), actor=None)
    assert (await store.authenticate(token)).expires_at == old.expires_at


async def test_zero_overlap_stops_the_old_key_at_once(store: KeyStore) -> None:
    token, old = await store.create(Role.ANALYST)
    await store.rotate(old.id, overlap=timedelta(0), actor=None)
    with pytest.raises(AuthenticationError, match="rotated"):
        await store.authenticate(token)


async def test_what_cannot_be_rotated(store: KeyStore, clock: FakeClock) -> None:
    _, old = await store.create(Role.ANALYST)
    new, _ = await store.rotate(old.id, overlap=HOUR, actor=None)
    with pytest.raises(PlatformStateError, match=f"rotate {new.id} instead"):
        await store.rotate(old.id, overlap=HOUR, actor=None)
    _, revoked = await store.create(Role.ANALYST)
    await store.revoke(revoked.id)
    with pytest.raises(PlatformStateError, match="is revoked and cannot be rotated"):
        await store.rotate(revoked.id, overlap=HOUR, actor=None)
    _, expired = await store.create(Role.ANALYST, expires_in=timedelta(seconds=1))
    clock.advance(2)
    with pytest.raises(PlatformStateError, match="is expired"):
        await store.rotate(expired.id, overlap=HOUR, actor=None)
    with pytest.raises(NotFoundError, match="key_nope"):
        await store.rotate("key_nope", overlap=HOUR, actor=None)
    with pytest.raises(InvalidInputError, match="overlap"):
        await store.rotate(new.id, overlap=timedelta(seconds=-1), actor=None)


async def test_rotation_hooks_run_in_the_same_transaction(data_dir: Path, clock: FakeClock) -> None:
    seen: list[tuple[str, str, bool]] = []

    async def copy_grants(session: AsyncSession, old_id: str, new_id: str) -> None:
        count = await session.scalar(text("SELECT count(*) FROM api_keys"))
        seen.append((old_id, new_id, count == 2 and session.in_transaction()))

    settings = Settings(data_dir=data_dir)
    await upgrade(settings)
    engine = create_engine(settings)
    try:
        hooked = KeyStore(session_factory(engine), clock.now, on_rotate=[copy_grants])
        _, old = await hooked.create(Role.ANALYST)
        new, _ = await hooked.rotate(old.id, overlap=HOUR, actor=None)
    finally:
        await engine.dispose()
    assert seen == [(old.id, new.id, True)]


# ---- the gateway's auth cache ----------------------------------------------------------


async def test_the_cache_never_trusts_an_old_key_past_the_overlap_end(
    store: KeyStore, clock: FakeClock
) -> None:
    cache = CachedAuthenticator(store, ttl_s=300, now=clock.monotonic, utcnow=clock.now)
    token, old = await store.create(Role.SERVICE)
    await cache.authenticate(token)  # cached with no expiry
    await store.rotate(old.id, overlap=timedelta(seconds=30), actor=None)
    cache.invalidate(old.id)  # what the REST route does on this replica
    assert (await cache.authenticate(token)).expires_at == clock.now() + timedelta(seconds=30)
    clock.advance(29)
    await cache.authenticate(token)  # from the cache, inside the overlap
    clock.advance(1)
    with pytest.raises(AuthenticationError, match="rotated"):
        await cache.authenticate(token)


async def test_the_cache_rechecks_the_wall_clock_on_every_hit(
    store: KeyStore, clock: FakeClock
) -> None:
    frozen = clock.monotonic()
    cache = CachedAuthenticator(store, ttl_s=300, now=lambda: frozen, utcnow=clock.now)
    token, old = await store.create(Role.SERVICE)
    await store.rotate(old.id, overlap=timedelta(seconds=60), actor=None)
    await cache.authenticate(token)
    # The wall clock moves on (NTP step, suspended VM) while the monotonic one does not.
    clock.advance(61)
    with pytest.raises(AuthenticationError, match="rotated"):
        await cache.authenticate(token)


# ---- REST ------------------------------------------------------------------------------


@pytest.fixture
async def ident(data_dir: Path) -> AsyncIterator[Identity]:
    async with identity(identity_settings(data_dir)) as value:
        yield value


async def test_rest_rotation_needs_keys_manage_and_returns_the_secret_once(
    ident: Identity,
) -> None:
    admin, _ = await ident.keys.create(Role.ADMIN, "root")
    engineer, _ = await ident.keys.create(Role.ENGINEER, "eng")
    old_token, old = await ident.keys.create(Role.SERVICE, "ingest")
    async with client(ident.app()) as http:
        assert (await http.get("/api/v1/whoami", headers=bearer(old_token))).status_code == 200
        refused = await http.post(f"/api/v1/keys/{old.id}/rotate", headers=bearer(engineer))
        assert refused.status_code == 403
        assert error_of(refused)["code"] == "permission_denied"
        assert (await http.post(f"/api/v1/keys/{old.id}/rotate")).status_code == 401
        reply = await http.post(
            f"/api/v1/keys/{old.id}/rotate", headers=bearer(admin), json={"overlap_s": 600}
        )
        assert reply.status_code == 201, reply.text
        body = reply.json()
        assert body["replaces"] == old.id and body["overlap_s"] == 600
        assert body["key"].startswith("dp_") and "digest" not in body
        new_token = body["key"]
        listed = (await http.get("/api/v1/keys", headers=bearer(admin))).json()
        assert new_token not in json.dumps(listed)
        assert {k["id"]: k["replaced_by"] for k in listed}[old.id] == body["id"]
        # The route dropped the cached verdict: the shortened expiry applies at once.
        ident.clock.advance(599)
        assert (await http.get("/api/v1/whoami", headers=bearer(old_token))).status_code == 200
        ident.clock.advance(1)
        gone = await http.get("/api/v1/whoami", headers=bearer(old_token))
        assert gone.status_code == 401
        assert "rotated" in error_of(gone)["message"]
        mine = await http.get("/api/v1/whoami", headers=bearer(new_token))
        assert mine.json()["key_id"] == body["id"]
        again = await http.post(f"/api/v1/keys/{old.id}/rotate", headers=bearer(admin))
        assert again.status_code == 409


async def test_rest_rotation_defaults_to_the_configured_overlap(ident: Identity) -> None:
    admin, _ = await ident.keys.create(Role.ADMIN, "root")
    _, old = await ident.keys.create(Role.SERVICE, "ingest")
    async with client(ident.app()) as http:
        reply = await http.post(f"/api/v1/keys/{old.id}/rotate", headers=bearer(admin))
    assert reply.status_code == 201
    assert reply.json()["overlap_s"] == 86_400


# ---- CLI -------------------------------------------------------------------------------

app = typer.Typer()


@app.callback()
def _root(
    ctx: typer.Context, config: Annotated[Path | None, typer.Option("--config")] = None
) -> None:
    ctx.obj = {"config_path": config}


app.add_typer(keys_app, name="keys")


@pytest.fixture
def runner(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> CliRunner:
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("DATAPUNK_DATA_DIR", str(tmp_path / "state"))
    return CliRunner()


def invoke(runner: CliRunner, *args: str) -> Any:
    return runner.invoke(app, list(args), catch_exceptions=False)


async def _authenticate(data_dir: Path, token: str) -> str:
    engine = create_engine(Settings(data_dir=data_dir))
    try:
        store = KeyStore(session_factory(engine), FakeClock().now)
        return (await store.authenticate(token)).key_id
    finally:
        await engine.dispose()


def test_cli_rotate_prints_the_new_key_once(runner: CliRunner, tmp_path: Path) -> None:
    created = json.loads(invoke(runner, "keys", "create", "--role", "service", "--json").stdout)
    result = invoke(runner, "keys", "rotate", created["id"], "--overlap", "2h")
    assert result.exit_code == 0, result.output
    lines = result.stdout.splitlines()
    new_tokens = [line for line in lines if line.startswith("dp_")]
    assert len(new_tokens) == 1
    assert "will not be shown again" in result.stdout and created["id"] in result.stdout
    new_id = asyncio.run(_authenticate(tmp_path / "state", new_tokens[0]))
    listed = json.loads(invoke(runner, "keys", "ls", "--json").stdout)
    by_id = {k["id"]: k for k in listed}
    assert by_id[created["id"]]["status"] == "rotating"
    assert new_tokens[0] not in json.dumps(listed)
    assert new_id in by_id


def test_cli_rotate_json_and_errors(runner: CliRunner) -> None:
    created = json.loads(invoke(runner, "keys", "create", "--role", "analyst", "--json").stdout)
    body = json.loads(invoke(runner, "keys", "rotate", created["id"], "--json").stdout)
    assert body["replaces"] == created["id"] and body["key"].startswith("dp_")
    again = invoke(runner, "keys", "rotate", created["id"])
    assert again.exit_code == 2 and f"rotate {body['id']} instead" in again.stderr
    bad = invoke(runner, "keys", "rotate", body["id"], "--overlap", "soon")
    assert bad.exit_code == 2 and "1h30m" in bad.output


@pytest.mark.parametrize(
    ("text_value", "seconds"),
    [("24h", 86_400), ("90m", 5_400), ("1h30m", 5_400), ("2d", 172_800), ("45s", 45), ("0", 0)],
)
def test_parse_duration(text_value: str, seconds: float) -> None:
    assert parse_duration(text_value).total_seconds() == seconds


@pytest.mark.parametrize("bad", ["", "h", "10", "1x", "-1h", "1h 30m"])
def test_parse_duration_refuses(bad: str) -> None:
    with pytest.raises(typer.BadParameter):
        parse_duration(bad)
