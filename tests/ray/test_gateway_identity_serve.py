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

import httpx
import pytest

from cluster.security.accounts import AccountService
from cluster.security.keys import KeyStore
from cluster.security.passwords import HashParameters, Passwords
from cluster.security.session_store import SessionStore
from cluster.security.user_store import UserStore
from cluster.settings import Settings
from serve_apps.gateway import build
from tests.ray.serve_support import bearer, deployed_apps, migrated_sessions, serve_settings, utcnow

APP_NAME = "gateway-identity-test"
PASSWORD = "correct horse battery staple"


@dataclass(frozen=True)
class Deployed:
    settings: Settings
    base_url: str
    admin_key: str


async def _seed(settings: Settings) -> str:
    async with migrated_sessions(settings) as sessions:
        accounts = AccountService(
            UserStore(sessions, utcnow),
            SessionStore(sessions, utcnow),
            Passwords(HashParameters.from_settings(settings)),
            utcnow,
        )
        await accounts.create_user("alice", PASSWORD, "analyst")
        admin, _ = await KeyStore(sessions, utcnow).create("admin", "test admin")
        return admin


@pytest.fixture(scope="module")
def deployed(ray_cluster: None, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Deployed]:
    settings = serve_settings(
        tmp_path_factory.mktemp("identity"),
        gateway={"auth_cache_ttl_s": 0.5},
        pools={"lake": 0, "stream": 0, "cortex": 0, "forge": 0},
        auth={"argon2_time_cost": 1, "argon2_memory_kib": 1024, "argon2_parallelism": 1},
    )
    admin = asyncio.run(_seed(settings))
    apps = [(APP_NAME, build, "/")]
    with deployed_apps(settings, apps, pools=False, ready_timeout_s=90) as base:
        yield Deployed(settings, base, admin)


def test_login_refresh_logout_through_serve(deployed: Deployed) -> None:
    base = deployed.base_url
    login = httpx.post(
        f"{base}/api/v1/auth/login", json={"username": "alice", "password": PASSWORD}
    )
    assert login.status_code == 200, login.text
    body = login.json()
    me = httpx.get(f"{base}/api/v1/auth/me", headers=bearer(body["access_token"]))
    assert (me.json()["kind"], me.json()["name"]) == ("user", "alice")
    renewed = httpx.post(
        f"{base}/api/v1/auth/refresh", json={"refresh_token": body["refresh_token"]}
    ).json()
    access = bearer(renewed["access_token"])
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
    admin = bearer(deployed.admin_key)
    created = httpx.post(f"{base}/api/v1/keys", json={"role": "service"}, headers=admin).json()
    old = bearer(created["key"])
    assert httpx.get(f"{base}/api/v1/whoami", headers=old).status_code == 200
    rotated = httpx.post(
        f"{base}/api/v1/keys/{created['id']}/rotate", json={"overlap_s": 2}, headers=admin
    )
    assert rotated.status_code == 201, rotated.text
    new = bearer(rotated.json()["key"])
    assert httpx.get(f"{base}/api/v1/whoami", headers=old).status_code == 200
    time.sleep(2.6)  # past the overlap and the 0.5 s key cache
    gone = httpx.get(f"{base}/api/v1/whoami", headers=old)
    assert gone.status_code == 401 and "rotated" in gone.json()["error"]["message"]
    assert httpx.get(f"{base}/api/v1/whoami", headers=new).status_code == 200
