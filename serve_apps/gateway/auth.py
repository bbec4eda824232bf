"""API-key authentication and permission checks as FastAPI dependencies.

Authentication lives in the app itself, not in a proxy in front of it, so a replica's
own port reached directly (Serve's direct ingress binds one) is no way around it.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable

from fastapi import Request

from cluster.errors import AuthenticationError
from cluster.security.principal import Authenticator, Principal
from cluster.security.rbac import require


def credentials_from(request: Request) -> str:
    """The API key from ``Authorization: Bearer`` or ``X-API-Key``; 401 when absent."""
    header = request.headers.get("authorization")
    if header:
        scheme, _, token = header.partition(" ")
        if scheme.lower() != "bearer" or not token.strip():
            raise AuthenticationError(
                "Authorization header must be 'Bearer <api key>'; "
                "create a key with `datapunk keys create`"
            )
        return token.strip()
    token = request.headers.get("x-api-key", "").strip()
    if not token:
        raise AuthenticationError(
            "missing API key: send 'Authorization: Bearer <key>' or 'X-API-Key: <key>'; "
            "create one with `datapunk keys create --role analyst`"
        )
    return token


def principal_dependency(authenticator: Authenticator) -> Callable[[Request], Awaitable[Principal]]:
    """A dependency resolving the caller; stored on ``request.state`` for later checks."""

    async def current_principal(request: Request) -> Principal:
        principal = await authenticator.authenticate(credentials_from(request))
        request.state.principal = principal
        return principal

    return current_principal


def permission(name: str) -> Callable[[Request], Principal]:
    """A route dependency that demands ``name`` of the already authenticated caller."""

    def check(request: Request) -> Principal:
        principal: Principal = request.state.principal
        require(principal, name)
        return principal

    return check
