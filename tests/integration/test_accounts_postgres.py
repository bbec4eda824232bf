"""The identity stores (users, recovery codes, sessions, key rotation) on the real
PostgreSQL, and a sign-in through the gateway app on it."""

from __future__ import annotations

from pathlib import Path

import pytest

from cluster.security.auth_errors import TokenError
from cluster.security.rbac import Role
from cluster.settings import Settings
from tests.contracts.accounts import AccountStoreContract
from tests.unit.identity_support import (
    CHEAP_ARGON2,
    PASSWORD,
    bearer,
    client,
    identity,
)

pytestmark = pytest.mark.integration


class TestAccountStoresOnPostgres(AccountStoreContract):
    @pytest.fixture
    def db_settings(self, data_dir: Path, postgres_url: str) -> Settings:
        return Settings(data_dir=data_dir, database_url=postgres_url)


async def test_login_refresh_logout_on_postgres(
    data_dir: Path, postgres_url: str, redis_url: str
) -> None:
    settings = Settings(
        data_dir=data_dir, database_url=postgres_url, redis_url=redis_url, auth=CHEAP_ARGON2
    )
    async with identity(settings) as ident:
        await ident.user("alice", Role.ANALYST)
        async with client(ident.app()) as http:
            login = await http.post(
                "/api/v1/auth/login", json={"username": "alice", "password": PASSWORD}
            )
            assert login.status_code == 200, login.text
            body = login.json()
            renewed = await http.post(
                "/api/v1/auth/refresh", json={"refresh_token": body["refresh_token"]}
            )
            assert renewed.status_code == 200
            access = bearer(renewed.json()["access_token"])
            assert (await http.get("/api/v1/auth/me", headers=access)).json()["name"] == "alice"
            # A second replica trusts the open session for a few seconds...
            async with identity(settings, ident.clock) as other:
                token = renewed.json()["access_token"]
                assert (await other.authenticator.authenticate(token)).name == "alice"
                assert (await http.post("/api/v1/auth/logout", headers=access)).status_code == 200
                assert (await http.get("/api/v1/auth/me", headers=access)).status_code == 401
                # ...but sees the logout at once through Redis.
                with pytest.raises(TokenError, match="logout"):
                    await other.authenticator.authenticate(token)
