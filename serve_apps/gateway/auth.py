"""API-key authentication and permission checks as FastAPI dependencies.

Authentication lives in the app itself, not in a proxy in front of it, so a replica's
own port reached directly (Serve's direct ingress binds one) is no way around it.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Annotated

from fastapi import Request, Security
from fastapi.security import APIKeyHeader, HTTPAuthorizationCredentials, HTTPBearer

from cluster.errors import AuthenticationError
from cluster.security.grants import require_somewhere
from cluster.security.principal import Authenticator, Principal
from cluster.security.rbac import require

# Declared for OpenAPI: every authenticated operation lists both schemes as alternatives.
BEARER_SCHEME = HTTPBearer(
    auto_error=False,
    scheme_name="bearer",
    description="`Authorization: Bearer <api key or access token>`; keys come from "
    "`datapunk keys create`, access tokens from `POST /api/v1/auth/login`.",
)
API_KEY_SCHEME = APIKeyHeader(
    name="X-API-Key",
    auto_error=False,
    scheme_name="apiKey",
    description="The same API key in the `X-API-Key` header.",
)


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

    async def current_principal(
        request: Request,
        _bearer: Annotated[HTTPAuthorizationCredentials | None, Security(BEARER_SCHEME)] = None,
        _api_key: Annotated[str | None, Security(API_KEY_SCHEME)] = None,
    ) -> Principal:
        # The two schemes only declare themselves in OpenAPI; the token is read (and
        # refused with the gateway's own messages) by ``credentials_from``.
        principal = await authenticator.authenticate(credentials_from(request))
        request.state.principal = principal
        return principal

    return current_principal


@dataclass(frozen=True)
class PermissionCheck:
    """A route dependency demanding ``permission`` of the already authenticated caller.

    A class rather than a closure so the permission stays readable from the route's
    dependencies: the OpenAPI descriptions and the every-route security test derive
    what each route needs from it.
    """

    permission: str

    def __call__(self, request: Request) -> Principal:
        principal: Principal = request.state.principal
        request.state.permission = self.permission  # for the audit entry, denied or not
        require(principal, self.permission)
        # A key narrowed by grants needs one naming this permission; the route then
        # checks the object itself (serve_apps/gateway/access.py).
        require_somewhere(principal, self.permission)
        return principal


def permission(name: str) -> PermissionCheck:
    """A route dependency that demands ``name`` of the already authenticated caller."""
    return PermissionCheck(name)
