"""Access and refresh tokens (pyjwt HS256), the signing-key file, TOTP and recovery-code
primitives, session revocation and the gateway's bearer dispatch."""

from __future__ import annotations

import asyncio
import base64
import json
import os
import stat
from collections.abc import AsyncIterator
from datetime import timedelta
from pathlib import Path

import jwt
import pyotp
import pytest

from cluster.errors import AuthenticationError, ConfigError
from cluster.security import totp
from cluster.security.auth_errors import TokenError
from cluster.security.principal import Principal
from cluster.security.rbac import Role
from cluster.security.sessions import REVOKED_PREFIX
from cluster.security.tokens import (
    TokenSigner,
    load_or_create_key,
    looks_like_jwt,
    signer_from_settings,
)
from cluster.settings import Settings
from tests.clock import FakeClock
from tests.unit.identity_support import PASSWORD, Identity, identity, identity_settings

KEY = b"k" * 32


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


def signer(clock: FakeClock, key: bytes = KEY) -> TokenSigner:
    return TokenSigner(key, clock.now, access_ttl=timedelta(minutes=15))


# ---- tokens ----------------------------------------------------------------------------


def test_access_token_carries_sub_role_jti_sid(clock: FakeClock) -> None:
    token, claims = signer(clock).issue_access(
        subject="usr_1", username="alice", role=Role.ANALYST, session_id="ses_1"
    )
    assert looks_like_jwt(token)
    payload = jwt.decode(token, KEY, algorithms=["HS256"], options={"verify_exp": False})
    assert {k: payload[k] for k in ("sub", "role", "sid", "typ", "name")} == {
        "sub": "usr_1",
        "role": "analyst",
        "sid": "ses_1",
        "typ": "access",
        "name": "alice",
    }
    assert payload["jti"] == claims.token_id and len(claims.token_id) == 32
    assert payload["exp"] - payload["iat"] == 15 * 60
    assert signer(clock).verify(token, "access") == claims


def test_access_token_expires(clock: FakeClock) -> None:
    token, claims = signer(clock).issue_access(
        subject="usr_1", username="alice", role=Role.ANALYST, session_id="ses_1"
    )
    clock.advance(15 * 60 - 1)
    signer(clock).verify(token, "access")
    clock.advance(1)
    with pytest.raises(TokenError, match="access token expired at") as caught:
        signer(clock).verify(token, "access")
    assert caught.value.fields["reason"] == "expired"
    assert token not in caught.value.message
    assert claims.expires_at.isoformat(timespec="seconds") in caught.value.message


def test_refresh_and_access_tokens_are_not_interchangeable(clock: FakeClock) -> None:
    refresh, _ = signer(clock).issue_refresh(subject="usr_1", session_id="ses_1")
    access, _ = signer(clock).issue_access(
        subject="usr_1", username="a", role=Role.ADMIN, session_id="ses_1"
    )
    with pytest.raises(TokenError, match="refresh token was sent where a access"):
        signer(clock).verify(refresh, "access")
    with pytest.raises(TokenError, match="access token was sent where a refresh"):
        signer(clock).verify(access, "refresh")


def _forge(payload: dict[str, object], header: dict[str, object]) -> str:
    def part(value: dict[str, object]) -> str:
        raw = json.dumps(value).encode()
        return base64.urlsafe_b64encode(raw).rstrip(b"=").decode()

    return f"{part(header)}.{part(payload)}.c2ln"


def test_forged_and_foreign_tokens_are_refused(clock: FakeClock) -> None:
    token, _ = signer(clock, key=b"x" * 32).issue_access(
        subject="usr_1", username="a", role=Role.ADMIN, session_id="s"
    )
    with pytest.raises(TokenError, match="invalid token"):
        signer(clock).verify(token, "access")
    header, payload, _sig = token.split(".")
    tampered = f"{header}.{payload}.{'A' * 43}"
    with pytest.raises(TokenError, match="invalid token"):
        signer(clock).verify(tampered, "access")
    claims = jwt.decode(token, b"x" * 32, algorithms=["HS256"], options={"verify_exp": False})
    unsigned = _forge(claims, {"alg": "none", "typ": "JWT"})
    with pytest.raises(TokenError, match="invalid token"):
        signer(clock).verify(unsigned, "access")


def test_a_short_key_is_refused(clock: FakeClock) -> None:
    with pytest.raises(ConfigError, match="at least 32 bytes") as caught:
        TokenSigner(b"short", clock.now)
    assert "short" not in caught.value.message


def test_jwt_shape_versus_api_keys() -> None:
    assert looks_like_jwt("aGVhZA.Ym9keQ.c2ln")
    assert not looks_like_jwt("dp_" + "A" * 43)
    assert not looks_like_jwt("a.b")
    assert not looks_like_jwt("a..c")
    assert not looks_like_jwt("a.b.c d")


# ---- the signing key -------------------------------------------------------------------


def test_key_file_is_created_once_with_mode_0600(tmp_path: Path) -> None:
    path = tmp_path / "auth" / "jwt_signing_key"
    first = load_or_create_key(path)
    assert len(first) >= 64
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert load_or_create_key(path) == first
    assert [p.name for p in path.parent.iterdir()] == ["jwt_signing_key"]  # no temp left


def test_a_readable_key_file_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "key"
    load_or_create_key(path)
    path.chmod(0o644)
    with pytest.raises(ConfigError, match="chmod 600"):
        load_or_create_key(path)


async def test_concurrent_creation_agrees_on_one_key(tmp_path: Path) -> None:
    path = tmp_path / "auth" / "key"
    keys = await asyncio.gather(*(asyncio.to_thread(load_or_create_key, path) for _ in range(8)))
    assert len(set(keys)) == 1


def test_signer_from_settings_prefers_the_configured_key(tmp_path: Path, clock: FakeClock) -> None:
    configured = Settings(data_dir=tmp_path, auth={"signing_key": "s" * 40})
    token, _ = signer_from_settings(configured, clock.now).issue_refresh(
        subject="u", session_id="s"
    )
    jwt.decode(token, b"s" * 40, algorithms=["HS256"], options={"verify_exp": False})
    assert not (tmp_path / "auth").exists()
    from_file = signer_from_settings(Settings(data_dir=tmp_path), clock.now)
    assert (tmp_path / "auth" / "jwt_signing_key").exists()
    assert from_file.access_ttl == timedelta(minutes=15)
    assert from_file.refresh_ttl == timedelta(days=7)
    assert oct(os.stat(tmp_path / "auth").st_mode & 0o777) == "0o700"


# ---- TOTP and recovery codes -----------------------------------------------------------


def test_totp_matches_pyotp_within_one_step(clock: FakeClock) -> None:
    secret = totp.new_secret()
    now = clock.now()
    step = totp.step_at(now)
    assert totp.code_at(secret, now) == pyotp.TOTP(secret).at(now)
    for offset in (-1, 0, 1):
        code = pyotp.TOTP(secret).generate_otp(step + offset)
        assert totp.matching_step(secret, code, now, None) == step + offset
    for offset in (-2, 2):
        code = pyotp.TOTP(secret).generate_otp(step + offset)
        assert totp.matching_step(secret, code, now, None) is None


def test_totp_refuses_steps_at_or_before_the_last_used(clock: FakeClock) -> None:
    secret = totp.new_secret()
    now = clock.now()
    code = totp.code_at(secret, now)
    step = totp.step_at(now)
    assert totp.matching_step(secret, code, now, last_step=step) is None
    assert totp.matching_step(secret, code, now, last_step=step - 1) == step
    assert totp.matching_step(secret, "12345", now, None) is None
    assert totp.matching_step(secret, "abcdef", now, None) is None


def test_recovery_codes_are_random_and_digests_ignore_format() -> None:
    codes = totp.new_recovery_codes()
    assert len(codes) == 10 == len(set(codes))
    for code in codes:
        assert len(code) == 19 and code.count("-") == 3
    code = codes[0]
    digest = totp.recovery_digest(code)
    assert len(digest) == 64 and code not in digest
    assert totp.recovery_digest(code.upper().replace("-", " ")) == digest


# ---- session revocation and dispatch ---------------------------------------------------


@pytest.fixture
async def ident(data_dir: Path) -> AsyncIterator[Identity]:
    async with identity(identity_settings(data_dir)) as value:
        yield value


async def test_bearer_dispatch_sends_jwts_to_tokens_and_the_rest_to_keys(
    ident: Identity,
) -> None:
    await ident.user("alice", Role.ANALYST)
    pair = await ident.backend.sessions.login("alice", PASSWORD)
    user = await ident.authenticator.authenticate(pair.access_token)
    assert (user.kind, user.name, user.role) == ("user", "alice", Role.ANALYST)
    assert user.expires_at == pair.access.expires_at
    api_key, record = await ident.keys.create(Role.SERVICE, "ingest")
    key = await ident.authenticator.authenticate(api_key)
    assert key == Principal(key_id=record.id, name="ingest", role=Role.SERVICE)
    assert key.kind == "key"
    with pytest.raises(TokenError, match="refresh token was sent"):
        await ident.authenticator.authenticate(pair.refresh_token)
    with pytest.raises(AuthenticationError, match="malformed API key"):
        await ident.authenticator.authenticate("a.b")


async def test_a_revoked_session_is_known_through_the_shared_cache(ident: Identity) -> None:
    await ident.user("alice")
    pair = await ident.backend.sessions.login("alice", PASSWORD)
    revoked = ident.backend.sessions.revoked
    await revoked.check(pair.access.session_id)  # open
    await ident.cache.set(REVOKED_PREFIX + pair.access.session_id, b"logout", 900)
    with pytest.raises(TokenError, match="has ended \\(logout\\)"):
        await revoked.check(pair.access.session_id)


async def test_another_replica_sees_a_logout_within_the_recheck_interval(
    ident: Identity,
) -> None:
    """Without Redis each replica has its own cache: the database tells it."""
    await ident.user("alice")
    pair = await ident.backend.sessions.login("alice", PASSWORD)
    async with identity(ident.settings, ident.clock) as other:
        await other.authenticator.authenticate(pair.access_token)  # trusted for 5 s
        await ident.backend.sessions.logout(pair.access_token)
        ident.clock.advance(4.9)
        await other.authenticator.authenticate(pair.access_token)
        ident.clock.advance(0.1)
        with pytest.raises(TokenError, match="logout at"):
            await other.authenticator.authenticate(pair.access_token)
    with pytest.raises(TokenError, match="logout"):
        await ident.authenticator.authenticate(pair.access_token)


async def test_a_revoked_sid_is_remembered_for_the_access_token_lifetime(
    ident: Identity,
) -> None:
    await ident.user("alice")
    pair = await ident.backend.sessions.login("alice", PASSWORD)
    await ident.backend.sessions.logout(pair.access_token)
    key = REVOKED_PREFIX + pair.access.session_id
    assert await ident.cache.ttl(key) == pytest.approx(900)
    ident.clock.advance(901)
    assert await ident.cache.get(key) is None
