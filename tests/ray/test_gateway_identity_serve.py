"""People and rotated keys through the gateway as Serve runs it: real HTTP via HAProxy.

Proves the replica builds the identity stack from exported settings (its token signing
key file included) and that sign-in, refresh, logout and key rotation work on Serve's
ingress path, not only in the in-process app.
"""

from __future__ import annotations

import asyncio
import stat
import time
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime

import httpx
import pytest
from ray import serve

from cluster.db.engine import create_engine, session_factory
from cluster.db.migrate import upgrade
from cluster.security.accounts import AccountService
from cluster.security.keys import KeyStore
from cluster.security.passwords import HashParameters, Passwords
from cluster.security.session_store import SessionStore
from cluster.security.user_store import UserStore
from cluster.settings import Settings, load_settings
from serve_apps.gateway import build
from tests.ray.conftest import TEST_GATEWAY_PORT, TEST_NAMESPACE, TEST_SERVE_PORTS

APP_NAME = "gateway-identity-test"
PASSWORD = "correct horse battery staple"


@dataclass(frozen=True)
class Deployed:
    settings: Settings
    base_url: str
    admin_key: str


def _utcnow() -> datetime:
    return datetime.now(UTC)


async def _seed(settings: Settings) -> str:
    await upgrade(settings)
    engine = create_engine(settings)
    try:
        sessions = session_factory(engine)
        accounts = AccountService(
            UserStore(sessions, _utcnow),
            SessionStore(sessions, _utcnow),
            Passwords(HashParameters.from_settings(settings)),
            _utcnow,
        )
        await accounts.create_user("alice", PASSWORD, "analyst")
        admin, _ = await KeyStore(sessions, _utcnow).create("admin", "test admin")
        return admin
    finally:
        await engine.dispose()


@pytest.fixture(scope="module")
def deployed(ray_cluster: None, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Deployed]:
    settings = load_settings(
        data_dir=tmp_path_factory.mktemp("identity"),
        ray={"namespace": TEST_NAMESPACE},
        gateway={"port": TEST_GATEWAY_PORT, "auth_cache_ttl_s": 0.5, **TEST_SERVE_PORTS},
        pools={"lake": 0, "stream": 0, "cortex": 0, "forge": 0},
        auth={"argon2_time_cost": 1, "argon2_memory_kib": 1024, "argon2_parallelism": 1},
    )
    admin = asyncio.run(_seed(settings))
    serve.start(http_options={"host": "127.0.0.1", "port": TEST_GATEWAY_PORT})
    serve.run(build(settings), name=APP_NAME, route_prefix="/", blocking=False)
    base = f"http://127.0.0.1:{TEST_GATEWAY_PORT}"
    _wait_ready(base)
    try:
        yield Deployed(settings, base, admin)
    finally:
        serve.delete(APP_NAME)


def _wait_ready(base: str, timeout_s: float = 90) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        try:
            if httpx.get(f"{base}/readyz", timeout=5).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.3)
    raise AssertionError(f"gateway at {base} never became ready")


def _bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


def test_login_refresh_logout_through_serve(deployed: Deployed) -> None:
    base = deployed.base_url
    login = httpx.post(
        f"{base}/api/v1/auth/login", json={"username": "alice", "password": PASSWORD}
    )
    assert login.status_code == 200, login.text
    body = login.json()
    me = httpx.get(f"{base}/api/v1/auth/me", headers=_bearer(body["access_token"]))
    assert (me.json()["kind"], me.json()["name"]) == ("user", "alice")
    renewed = httpx.post(
        f"{base}/api/v1/auth/refresh", json={"refresh_token": body["refresh_token"]}
    ).json()
    access = _bearer(renewed["access_token"])
    assert httpx.post(f"{base}/api/v1/auth/logout", headers=access).status_code == 200
    refused = httpx.get(f"{base}/api/v1/whoami", headers=access)
    assert refused.status_code == 401 and "logout" in refused.json()["error"]["message"]
    # The replica made its signing key file private, under the data dir.
    key_file = deployed.settings.signing_key_path
    assert stat.S_IMODE(key_file.stat().st_mode) == 0o600


def test_wrong_password_is_401_with_the_error_body(deployed: Deployed) -> None:
    reply = httpx.post(
        f"{deployed.base_url}/api/v1/auth/login",
        json={"username": "alice", "password": "not the password"},
    )
    assert reply.status_code == 401
    assert reply.json()["error"]["request_id"] == reply.headers["x-request-id"]
    assert "not the password" not in reply.text


def test_a_rotated_key_works_for_the_overlap_then_stops(deployed: Deployed) -> None:
    base = deployed.base_url
    admin = _bearer(deployed.admin_key)
    created = httpx.post(f"{base}/api/v1/keys", json={"role": "service"}, headers=admin).json()
    old = _bearer(created["key"])
    assert httpx.get(f"{base}/api/v1/whoami", headers=old).status_code == 200
    rotated = httpx.post(
        f"{base}/api/v1/keys/{created['id']}/rotate", json={"overlap_s": 2}, headers=admin
    )
    assert rotated.status_code == 201, rotated.text
    new = _bearer(rotated.json()["key"])
    assert httpx.get(f"{base}/api/v1/whoami", headers=old).status_code == 200
    time.sleep(2.6)  # past the overlap and the 0.5 s key cache
    gone = httpx.get(f"{base}/api/v1/whoami", headers=old)
    assert gone.status_code == 401 and "rotated" in gone.json()["error"]["message"]
    assert httpx.get(f"{base}/api/v1/whoami", headers=new).status_code == 200
