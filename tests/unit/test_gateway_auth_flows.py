"""People signing in through the gateway: login, MFA, refresh rotation and reuse, logout,
lockout, user administration over REST and `datapunk users`; no secret in logs or
error bodies."""

from __future__ import annotations

import json
import logging
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Annotated, Any

import httpx
import pytest
import typer
from typer.testing import CliRunner

from cluster.cli_users import users_app
from cluster.security.rbac import Role
from tests.unit.gateway_support import error_of
from tests.unit.identity_support import (
    PASSWORD,
    Identity,
    bearer,
    client,
    identity,
    identity_settings,
)

LOGIN = "/api/v1/auth/login"
REFRESH = "/api/v1/auth/refresh"


@pytest.fixture
async def ident(data_dir: Path) -> AsyncIterator[Identity]:
    async with identity(identity_settings(data_dir, lockout_threshold=3)) as value:
        yield value


@pytest.fixture
async def http(ident: Identity) -> AsyncIterator[httpx.AsyncClient]:
    async with client(ident.app()) as value:
        yield value


async def login(http: httpx.AsyncClient, **body: str) -> httpx.Response:
    return await http.post(LOGIN, json={"username": "alice", "password": PASSWORD, **body})


async def tokens(http: httpx.AsyncClient, **body: str) -> dict[str, Any]:
    reply = await login(http, **body)
    assert reply.status_code == 200, reply.text
    result: dict[str, Any] = reply.json()
    return result


# ---- login, me, permissions ------------------------------------------------------------


async def test_login_gives_a_token_pair_that_authenticates(
    ident: Identity, http: httpx.AsyncClient
) -> None:
    user = await ident.user("alice", Role.ANALYST)
    body = await tokens(http)
    assert body["token_type"] == "bearer"
    assert body["expires_in"] == 900 and body["refresh_expires_in"] == 7 * 86_400
    me = await http.get("/api/v1/auth/me", headers=bearer(body["access_token"]))
    assert me.status_code == 200
    assert me.json() | {"last_login_at": None} == {
        "kind": "user",
        "id": user.id,
        "name": "alice",
        "role": "analyst",
        "permissions": ["lake.table:read", "model:read", "platform:read", "stream:read"],
        "expires_at": me.json()["expires_at"],
        "mfa": "off",
        "recovery_codes_left": 0,
        "last_login_at": None,
    }
    whoami = await http.get("/api/v1/whoami", headers=bearer(body["access_token"]))
    assert whoami.json()["key_id"] == user.id
    # The role's permissions apply as for an API key.
    denied = await http.get("/api/v1/keys", headers=bearer(body["access_token"]))
    assert denied.status_code == 403 and error_of(denied)["code"] == "permission_denied"


async def test_a_users_grants_restrict_their_tokens(
    ident: Identity, http: httpx.AsyncClient
) -> None:
    # A user with grants is narrowed to them exactly as a key is; a grant added later
    # reaches a live token within the grants' cache time.
    from cluster.db.engine import create_engine, session_factory
    from cluster.security.grant_store import UserGrantStore
    from cluster.security.grants import make_grant

    user = await ident.user("alice", Role.ANALYST)
    token = (await tokens(http))["access_token"]
    assert (await http.get("/api/v1/whoami", headers=bearer(token))).json()["grants"] == []
    engine = create_engine(ident.settings)
    try:
        store = UserGrantStore(session_factory(engine), ident.clock.now)
        await store.replace(user.id, [make_grant("lake.table:read", "table:sales.orders")])
    finally:
        await engine.dispose()
    ident.clock.advance(6)  # past the grants' cache time (gateway.auth_cache_ttl_s, 5 s)
    shown = (await http.get("/api/v1/whoami", headers=bearer(token))).json()["grants"]
    assert shown == [{"permission": "lake.table:read", "scope": "table:sales.orders"}]


async def test_bad_credentials_are_one_401(ident: Identity, http: httpx.AsyncClient) -> None:
    await ident.user("alice")
    wrong = await login(http, password="not the password")
    nobody = await http.post(LOGIN, json={"username": "nobody", "password": PASSWORD})
    assert wrong.status_code == nobody.status_code == 401
    assert error_of(wrong)["message"] == error_of(nobody)["message"]
    assert error_of(wrong)["code"] == "unauthenticated"


async def test_lockout_answers_423_until_unlocked(ident: Identity, http: httpx.AsyncClient) -> None:
    await ident.user("alice")
    admin, _ = await ident.keys.create(Role.ADMIN, "root")
    statuses = [(await login(http, password="wrong password!")).status_code for _ in range(3)]
    assert statuses == [401, 401, 423]
    locked = await login(http)
    assert locked.status_code == 423
    error = error_of(locked)
    assert error["code"] == "account_locked" and "until 2026-01-02T03:" in error["message"]
    listed = (await http.get("/api/v1/users", headers=bearer(admin))).json()
    assert listed[0]["status"] == "locked"
    unlocked = await http.post("/api/v1/users/alice/unlock", headers=bearer(admin))
    assert unlocked.status_code == 200 and unlocked.json()["status"] == "active"
    assert (await login(http)).status_code == 200


# ---- MFA -------------------------------------------------------------------------------


async def _enrol(ident: Identity, http: httpx.AsyncClient) -> tuple[str, list[str]]:
    access = (await tokens(http))["access_token"]
    enrolled = await http.post("/api/v1/auth/mfa/enroll", headers=bearer(access))
    assert enrolled.status_code == 200, enrolled.text
    body = enrolled.json()
    assert body["provisioning_uri"].startswith("otpauth://totp/Datapunk:alice?")
    ident.next_step()
    confirm = await http.post(
        "/api/v1/auth/mfa/confirm",
        headers=bearer(access),
        json={"otp": ident.code(body["secret"])},
    )
    assert confirm.status_code == 200, confirm.text
    assert confirm.json()["mfa"] == "on" and confirm.json()["recovery_codes_left"] == 10
    ident.next_step()
    return body["secret"], body["recovery_codes"]


async def test_mfa_enrol_confirm_then_login_needs_the_code(
    ident: Identity, http: httpx.AsyncClient
) -> None:
    await ident.user("alice")
    secret, _ = await _enrol(ident, http)
    needed = await login(http)
    assert needed.status_code == 401
    assert error_of(needed)["code"] == "mfa_required"
    code = ident.code(secret)
    assert (await login(http, otp=code)).status_code == 200
    replayed = await login(http, otp=code)
    assert replayed.status_code == 401
    assert "each works once" in error_of(replayed)["message"]
    ident.next_step()
    assert (await login(http, otp=ident.code(secret))).status_code == 200


async def test_a_recovery_code_signs_in_once(ident: Identity, http: httpx.AsyncClient) -> None:
    await ident.user("alice")
    _, codes = await _enrol(ident, http)
    first = await tokens(http, recovery_code=codes[3])
    me = await http.get("/api/v1/auth/me", headers=bearer(first["access_token"]))
    assert me.json()["recovery_codes_left"] == 9
    again = await login(http, recovery_code=codes[3])
    assert again.status_code == 401 and codes[3] not in again.text


async def test_an_api_key_cannot_enrol_or_log_out(ident: Identity, http: httpx.AsyncClient) -> None:
    key, record = await ident.keys.create(Role.ADMIN, "root")
    for path in ("/api/v1/auth/mfa/enroll", "/api/v1/auth/logout"):
        reply = await http.post(path, headers=bearer(key))
        assert reply.status_code == 409 and "datapunk keys" in error_of(reply)["message"]
    me = (await http.get("/api/v1/auth/me", headers=bearer(key))).json()
    assert (me["kind"], me["id"], me["mfa"]) == ("key", record.id, None)


# ---- refresh, logout, expiry -----------------------------------------------------------


async def test_refresh_rotates_and_a_reused_token_ends_the_session(
    ident: Identity, http: httpx.AsyncClient
) -> None:
    await ident.user("alice")
    first = await tokens(http)
    ident.clock.advance(60)
    second = (await http.post(REFRESH, json={"refresh_token": first["refresh_token"]})).json()
    assert second["session_id"] == first["session_id"]
    assert second["refresh_token"] != first["refresh_token"]
    assert second["access_token"] != first["access_token"]
    me = await http.get("/api/v1/auth/me", headers=bearer(second["access_token"]))
    assert me.status_code == 200
    # The first refresh token again: a reuse. The whole session ends.
    reused = await http.post(REFRESH, json={"refresh_token": first["refresh_token"]})
    assert reused.status_code == 401
    assert "already used" in error_of(reused)["message"]
    for access in (first["access_token"], second["access_token"]):
        gone = await http.get("/api/v1/auth/me", headers=bearer(access))
        assert gone.status_code == 401
        assert "refresh token reuse" in error_of(gone)["message"]
    after = await http.post(REFRESH, json={"refresh_token": second["refresh_token"]})
    assert after.status_code == 401 and "has ended" in error_of(after)["message"]


async def test_logout_revokes_the_access_and_refresh_tokens(
    ident: Identity, http: httpx.AsyncClient
) -> None:
    await ident.user("alice")
    body = await tokens(http)
    access = bearer(body["access_token"])
    assert (await http.get("/api/v1/whoami", headers=access)).status_code == 200
    out = await http.post("/api/v1/auth/logout", headers=access)
    assert out.status_code == 200 and out.json()["session_id"] == body["session_id"]
    refused = await http.get("/api/v1/whoami", headers=access)
    assert refused.status_code == 401 and "logout" in error_of(refused)["message"]
    again = await http.post(REFRESH, json={"refresh_token": body["refresh_token"]})
    assert again.status_code == 401
    # Other sessions of the same user are untouched.
    other = await tokens(http)
    assert (await http.get("/api/v1/whoami", headers=bearer(other["access_token"]))).is_success


async def test_an_expired_access_token_is_401_and_refresh_renews_it(
    ident: Identity, http: httpx.AsyncClient
) -> None:
    await ident.user("alice")
    body = await tokens(http)
    ident.clock.advance(15 * 60)
    expired = await http.get("/api/v1/whoami", headers=bearer(body["access_token"]))
    assert expired.status_code == 401
    assert "access token expired" in error_of(expired)["message"]
    assert "/api/v1/auth/refresh" in error_of(expired)["message"]
    renewed = await http.post(REFRESH, json={"refresh_token": body["refresh_token"]})
    assert renewed.status_code == 200
    whoami = await http.get("/api/v1/whoami", headers=bearer(renewed.json()["access_token"]))
    assert whoami.status_code == 200


async def test_a_refresh_token_expires_after_seven_days(
    ident: Identity, http: httpx.AsyncClient
) -> None:
    await ident.user("alice")
    body = await tokens(http)
    ident.clock.advance(7 * 86_400)
    reply = await http.post(REFRESH, json={"refresh_token": body["refresh_token"]})
    assert reply.status_code == 401 and "log in again" in error_of(reply)["message"]


# ---- user administration ---------------------------------------------------------------


async def test_users_rest_needs_keys_manage(ident: Identity, http: httpx.AsyncClient) -> None:
    admin, _ = await ident.keys.create(Role.ADMIN, "root")
    engineer, _ = await ident.keys.create(Role.ENGINEER, "eng")
    body = {"username": "Bob", "password": "bob's long password", "role": "analyst"}
    assert (await http.post("/api/v1/users", json=body)).status_code == 401
    assert (
        await http.post("/api/v1/users", json=body, headers=bearer(engineer))
    ).status_code == 403
    created = await http.post("/api/v1/users", json=body, headers=bearer(admin))
    assert created.status_code == 201, created.text
    assert created.json()["username"] == "bob" and created.json()["role"] == "analyst"
    assert "password" not in created.text and "hash" not in created.text
    duplicate = await http.post("/api/v1/users", json=body, headers=bearer(admin))
    assert duplicate.status_code == 409


async def test_disabling_a_user_ends_their_sessions_at_once(
    ident: Identity, http: httpx.AsyncClient
) -> None:
    await ident.user("alice")
    admin, _ = await ident.keys.create(Role.ADMIN, "root")
    body = await tokens(http)
    disabled = await http.post("/api/v1/users/alice/disable", headers=bearer(admin))
    assert disabled.json()["sessions_ended"] == 1 and disabled.json()["status"] == "disabled"
    gone = await http.get("/api/v1/whoami", headers=bearer(body["access_token"]))
    assert gone.status_code == 401 and "account disabled" in error_of(gone)["message"]
    assert (await login(http)).status_code == 401
    assert (await http.post("/api/v1/users/alice/enable", headers=bearer(admin))).is_success
    assert (await login(http)).status_code == 200
    missing = await http.post("/api/v1/users/nobody/unlock", headers=bearer(admin))
    assert missing.status_code == 404


async def test_reset_mfa_over_rest(ident: Identity, http: httpx.AsyncClient) -> None:
    await ident.user("alice")
    admin, _ = await ident.keys.create(Role.ADMIN, "root")
    await _enrol(ident, http)
    assert (await login(http)).status_code == 401
    reset = await http.post("/api/v1/users/alice/reset-mfa", headers=bearer(admin))
    assert reset.json()["mfa"] == "off"
    assert (await login(http)).status_code == 200


# ---- no secret in logs or error bodies -------------------------------------------------


async def test_passwords_never_reach_logs_or_error_bodies(
    ident: Identity, http: httpx.AsyncClient, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    admin, _ = await ident.keys.create(Role.ADMIN, "root")
    await ident.user("alice")
    secrets_sent = ["wrong-password-xyz-1", "carol.example", "x" * 1025, "short pw"]
    replies = [
        await login(http, password=secrets_sent[0]),
        await http.post(
            "/api/v1/users",
            json={"username": "carol.example", "password": "Carol.Example", "role": "analyst"},
            headers=bearer(admin),
        ),
        await login(http, password=secrets_sent[2]),
        await http.post(
            "/api/v1/users",
            json={"username": "dave", "password": secrets_sent[3], "role": "analyst"},
            headers=bearer(admin),
        ),
        await http.post(LOGIN, content=b'{"username": "alice", "password": "broken json'),
    ]
    assert [r.status_code for r in replies] == [401, 422, 422, 422, 422]
    for reply in replies:
        error_of(reply)
    assert "must not be the username" in replies[1].text
    assert "at least 12" in replies[3].text
    for value in (*secrets_sent[::2], secrets_sent[3], PASSWORD, "broken json"):
        for reply in replies:
            assert value not in reply.text
        assert value not in caplog.text
    assert json.loads(replies[0].text)["error"]["message"].startswith("invalid username")


# ---- `datapunk users` ------------------------------------------------------------------

app = typer.Typer()


@app.callback()
def _root(
    ctx: typer.Context, config: Annotated[Path | None, typer.Option("--config")] = None
) -> None:
    ctx.obj = {"config_path": config}


app.add_typer(users_app, name="users")


@pytest.fixture
def runner(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> CliRunner:
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("DATAPUNK_DATA_DIR", str(tmp_path / "state"))
    for name, value in identity_settings(tmp_path).auth.model_dump().items():
        if name.startswith("argon2_"):
            monkeypatch.setenv(f"DATAPUNK_AUTH__{name.upper()}", str(value))
    return CliRunner()


def invoke(runner: CliRunner, *args: str, input: str | None = None) -> Any:
    return runner.invoke(app, list(args), input=input, catch_exceptions=False)


def test_cli_create_prompts_twice_without_echo(
    runner: CliRunner, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    typed = "a very private phrase"
    result = invoke(
        runner, "users", "create", "Erin", "--role", "engineer", input=f"{typed}\n{typed}\n"
    )
    assert result.exit_code == 0, result.output
    assert "Created user erin" in result.stdout
    assert typed not in result.output and typed not in caplog.text
    listed = json.loads(invoke(runner, "users", "ls", "--json").stdout)
    assert [(u["username"], u["role"], u["status"], u["mfa"]) for u in listed] == [
        ("erin", "engineer", "active", "off")
    ]
    assert "hash" not in json.dumps(listed)


def test_cli_refuses_a_weak_password_without_showing_it(runner: CliRunner) -> None:
    result = invoke(
        runner,
        "users",
        "create",
        "frankenstein1",
        "--role",
        "analyst",
        "--password-stdin",
        input="Frankenstein1\n",
    )
    assert result.exit_code == 2
    assert "must not be the username" in result.stderr
    assert "Frankenstein1" not in result.output


def test_cli_admin_commands(runner: CliRunner) -> None:
    invoke(
        runner,
        "users",
        "create",
        "gina",
        "--role",
        "analyst",
        "--password-stdin",
        input=f"{PASSWORD}\n",
    )
    assert "Disabled gina; ended 0 session(s)" in invoke(runner, "users", "disable", "gina").stdout
    assert json.loads(invoke(runner, "users", "ls", "--json").stdout)[0]["status"] == "disabled"
    assert "enabled" in invoke(runner, "users", "enable", "gina").stdout
    assert "unlocked" in invoke(runner, "users", "unlock", "gina").stdout
    assert "multi-factor" in invoke(runner, "users", "reset-mfa", "gina").stdout
    changed = invoke(
        runner, "users", "passwd", "gina", "--password-stdin", input="another long one\n"
    )
    assert changed.exit_code == 0 and "another long one" not in changed.output
    missing = invoke(runner, "users", "unlock", "nobody")
    assert missing.exit_code == 2 and "datapunk users ls" in missing.stderr
    table = invoke(runner, "users", "ls").stdout
    assert "gina" in table and "analyst" in table
