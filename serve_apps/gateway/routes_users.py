"""``/api/v1/users``: human accounts over REST, for holders of ``keys:manage``.

The same operations as ``datapunk users``. Identity administration shares the key
administrators' permission: whoever may mint an admin API key could as well create
an admin user, so a separate permission would add a role to check, not safety.
"""

from __future__ import annotations

from dataclasses import asdict
from typing import Any

from fastapi import APIRouter, Depends, Request
from pydantic import Field, SecretStr

from cluster.security.principal import Principal
from cluster.security.rbac import ALLOWED_ROLES
from cluster.security.user_store import UserRecord
from serve_apps.gateway.auth import permission
from serve_apps.gateway.bodies import StrictBody
from serve_apps.gateway.openapi import ErrorBody
from serve_apps.gateway.routes_auth import AuthBackend

_ERROR = {
    "model": ErrorBody,
    "description": "The one error body: `{error: {code, message, request_id}}`.",
}


class CreateUser(StrictBody):
    username: str = Field(min_length=1, max_length=100, description="Lower-case login name.")
    password: SecretStr = Field(
        min_length=1, max_length=1024, description="At least 12 characters, not the username."
    )
    role: str = Field(description=f"One of {ALLOWED_ROLES}.")


def public_user(record: UserRecord, now: Any) -> dict[str, Any]:
    """An account as JSON: no hash, no seed; with its status at ``now``."""
    body = asdict(record)
    body["role"] = record.role.value
    body["status"] = record.status(now)
    return body


def users_router(backend: AuthBackend) -> APIRouter:
    """Routes over ``backend.accounts``; disabling ends the user's sessions at once."""
    router = APIRouter(
        prefix="/users",
        tags=["users"],
        dependencies=[Depends(permission("keys:manage"))],
        responses={404: _ERROR},
    )
    accounts = backend.accounts

    @router.get("", summary="Human accounts (never their password hashes or MFA seeds).")
    async def list_users() -> list[dict[str, Any]]:
        now = backend.now()
        return [public_user(r, now) for r in await accounts.list_users()]

    @router.post(
        "",
        status_code=201,
        summary="Create an account.",
        responses={409: _ERROR, 422: _ERROR},
    )
    async def create_user(body: CreateUser, request: Request) -> dict[str, Any]:
        caller: Principal = request.state.principal
        record = await accounts.create_user(
            body.username, body.password.get_secret_value(), body.role, created_by=caller.key_id
        )
        return public_user(record, backend.now())

    @router.post("/{username}/disable", summary="Disable an account and end its sessions.")
    async def disable(username: str) -> dict[str, Any]:
        record, ended = await accounts.disable(username)
        await backend.sessions.end_all(ended, "account disabled")
        return {**public_user(record, backend.now()), "sessions_ended": len(ended)}

    @router.post("/{username}/enable", summary="Re-enable a disabled account.")
    async def enable(username: str) -> dict[str, Any]:
        return public_user(await accounts.enable(username), backend.now())

    @router.post("/{username}/unlock", summary="Lift a lockout after failed sign-ins.")
    async def unlock(username: str) -> dict[str, Any]:
        return public_user(await accounts.unlock(username), backend.now())

    @router.post("/{username}/reset-mfa", summary="Turn MFA off; the user enrols again.")
    async def reset_mfa(username: str) -> dict[str, Any]:
        return public_user(await accounts.reset_mfa(username), backend.now())

    return router
