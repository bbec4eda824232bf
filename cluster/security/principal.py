"""The authenticated caller, as the gateway and the actors see it."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Protocol

from cluster.security.grants import Grant
from cluster.security.rbac import Role


@dataclass(frozen=True, slots=True)
class Principal:
    """A caller identified by an API key: its id, display name and role.

    ``expires_at`` is the key's expiry (UTC), so a cache never trusts it past then.
    ``grants`` narrow the role to objects (``cluster.security.grants``); none: everywhere.
    """

    key_id: str
    name: str
    role: Role
    expires_at: datetime | None = None
    # "key" (an API key: ``key_id`` is the key's id) or "user" (a human signed in with
    # an access token: ``key_id`` is the user's id, ``expires_at`` the token's expiry).
    kind: str = "key"
    grants: tuple[Grant, ...] = ()


class Authenticator(Protocol):
    """Anything that maps a presented token to a ``Principal`` or raises ``AuthenticationError``."""

    async def authenticate(self, token: str) -> Principal:
        """The caller ``token`` identifies."""
        ...
