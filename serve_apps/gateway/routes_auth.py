"""``/api/v1/auth``: sign-in for people (login, refresh, logout, MFA enrolment, me).

``login`` and ``refresh`` are the only routes that take no credentials (they are how
one gets them); the rest sit behind the gateway's authenticator like every other
``/api/v1`` route. Passwords, codes and tokens arrive as ``SecretStr`` so no repr, log
line or validation message can show them.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from fastapi import APIRouter, Request
from pydantic import BaseModel, Field, SecretStr

from cluster.errors import PlatformStateError
from cluster.security.accounts import AccountService
from cluster.security.principal import Principal
from cluster.security.rbac import permissions_of
from cluster.security.sessions import SessionService
from cluster.security.user_store import UserRecord
from serve_apps.gateway.auth import credentials_from
from serve_apps.gateway.bodies import StrictBody
from serve_apps.gateway.openapi import ErrorBody

_ERROR = {
    "model": ErrorBody,
    "description": "The one error body: `{error: {code, message, request_id}}`.",
}


@dataclass
class AuthBackend:
    """What the auth routes need: accounts, sessions and the wall clock."""

    accounts: AccountService
    sessions: SessionService
    now: Callable[[], datetime]


class LoginBody(StrictBody):
    username: str = Field(min_length=1, max_length=100, description="The account's name.")
    password: SecretStr = Field(min_length=1, max_length=1024, description="Its password.")
    otp: SecretStr | None = Field(
        None, max_length=16, description="The authenticator app's 6-digit code (MFA on)."
    )
    recovery_code: SecretStr | None = Field(
        None, max_length=64, description="A one-time recovery code instead of `otp`."
    )


class RefreshBody(StrictBody):
    refresh_token: SecretStr = Field(
        min_length=1, max_length=4096, description="The refresh token of the last login."
    )


class ConfirmBody(StrictBody):
    otp: SecretStr = Field(
        min_length=1, max_length=16, description="The code the authenticator app shows now."
    )


class TokenResponse(BaseModel):
    access_token: str = Field(description="Send as `Authorization: Bearer <token>`.")
    refresh_token: str = Field(description="Single use: trade it at /auth/refresh.")
    token_type: str = Field("bearer", description="Always `bearer`.")
    expires_in: int = Field(description="Seconds the access token lives.")
    refresh_expires_in: int = Field(description="Seconds the refresh token lives.")
    session_id: str = Field(description="The session both tokens belong to.")


class EnrollmentResponse(BaseModel):
    provisioning_uri: str = Field(description="otpauth:// URI for the authenticator app.")
    secret: str = Field(description="The same seed, for typing in by hand.")
    recovery_codes: list[str] = Field(description="10 single-use codes; shown only now.")


class MeResponse(BaseModel):
    kind: str = Field(description="`user` (signed in) or `key` (an API key).")
    id: str = Field(description="The user's or the key's id.")
    name: str = Field(description="Username or key name.")
    role: str
    permissions: list[str]
    expires_at: datetime | None = Field(None, description="When these credentials end.")
    mfa: str | None = Field(None, description="off, pending or on (users only).")
    recovery_codes_left: int | None = Field(None, description="Unspent (users only).")
    last_login_at: datetime | None = None


class LogoutResponse(BaseModel):
    session_id: str
    status: str = "ended"


def _secret(value: SecretStr | None) -> str | None:
    return None if value is None else value.get_secret_value()


def auth_public_router(backend: AuthBackend) -> APIRouter:
    """``login`` and ``refresh``: mounted outside the authenticated ``/api/v1`` router."""
    router = APIRouter(prefix="/auth", tags=["auth"])
    refusals: dict[int | str, dict[str, Any]] = {401: _ERROR, 423: _ERROR, 422: _ERROR}

    @router.post(
        "/login",
        response_model=TokenResponse,
        summary="Sign in with username and password (and a code when MFA is on).",
        responses=refusals,
    )
    async def login(body: LoginBody) -> dict[str, Any]:
        pair = await backend.sessions.login(
            body.username,
            body.password.get_secret_value(),
            otp=_secret(body.otp),
            recovery_code=_secret(body.recovery_code),
        )
        return pair.to_dict()

    @router.post(
        "/refresh",
        response_model=TokenResponse,
        summary="Trade a refresh token for a new pair; a reused one ends the session.",
        responses={401: _ERROR, 422: _ERROR},
    )
    async def refresh(body: RefreshBody) -> dict[str, Any]:
        pair = await backend.sessions.refresh(body.refresh_token.get_secret_value())
        return pair.to_dict()

    return router


def _user_only(principal: Principal, what: str) -> None:
    if principal.kind != "user":
        raise PlatformStateError(
            f"{what} is for users signed in at POST /api/v1/auth/login; an API key is "
            "managed with `datapunk keys` (rotate, revoke)",
            kind=principal.kind,
        )


def auth_router(backend: AuthBackend) -> APIRouter:
    """``logout``, ``mfa/enroll``, ``mfa/confirm``, ``me``: for an authenticated caller."""
    router = APIRouter(prefix="/auth", tags=["auth"])

    @router.post(
        "/logout",
        response_model=LogoutResponse,
        summary="End this session: its refresh and access tokens stop working.",
        responses={409: _ERROR},
    )
    async def logout(request: Request) -> dict[str, Any]:
        _user_only(request.state.principal, "logout")
        session_id = await backend.sessions.logout(credentials_from(request))
        return {"session_id": session_id, "status": "ended"}

    @router.post(
        "/mfa/enroll",
        response_model=EnrollmentResponse,
        summary="Start MFA enrolment: a TOTP seed and recovery codes (shown once).",
        responses={409: _ERROR},
    )
    async def enroll(request: Request) -> dict[str, Any]:
        principal: Principal = request.state.principal
        _user_only(principal, "MFA enrolment")
        enrollment = await backend.accounts.enroll_mfa(principal.key_id)
        return {
            "provisioning_uri": enrollment.provisioning_uri,
            "secret": enrollment.secret,
            "recovery_codes": list(enrollment.recovery_codes),
        }

    @router.post(
        "/mfa/confirm",
        response_model=MeResponse,
        summary="Turn MFA on with the first code the authenticator app shows.",
        responses={409: _ERROR, 422: _ERROR},
    )
    async def confirm(body: ConfirmBody, request: Request) -> dict[str, Any]:
        principal: Principal = request.state.principal
        _user_only(principal, "MFA confirmation")
        user = await backend.accounts.confirm_mfa(principal.key_id, body.otp.get_secret_value())
        return await _me_user(backend, principal, user)

    @router.get("/me", response_model=MeResponse, summary="Who the caller is.")
    async def me(request: Request) -> dict[str, Any]:
        principal: Principal = request.state.principal
        if principal.kind == "user":
            user = await backend.accounts.user(principal.key_id)
            return await _me_user(backend, principal, user)
        return {
            "kind": principal.kind,
            "id": principal.key_id,
            "name": principal.name,
            "role": str(principal.role),
            "permissions": sorted(permissions_of(principal.role)),
            "expires_at": principal.expires_at,
        }

    return router


async def _me_user(backend: AuthBackend, principal: Principal, user: UserRecord) -> dict[str, Any]:
    return {
        "kind": "user",
        "id": user.id,
        "name": user.username,
        "role": user.role.value,
        "permissions": sorted(permissions_of(user.role)),
        "expires_at": principal.expires_at,
        "mfa": user.mfa,
        "recovery_codes_left": await backend.accounts.users.recovery_codes_left(user.id),
        "last_login_at": user.last_login_at,
    }
