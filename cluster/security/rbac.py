"""Roles, permissions and the table between them.

A permission is a ``resource:action`` string. The table is data, not code paths, so
``datapunk keys create --role`` and the gateway's checks can never disagree.
"""

from __future__ import annotations

from enum import StrEnum
from typing import TYPE_CHECKING

from cluster.errors import InvalidInputError, PermissionDeniedError

if TYPE_CHECKING:
    from cluster.security.principal import Principal


class Role(StrEnum):
    """What kind of caller a key belongs to."""

    ADMIN = "admin"
    ENGINEER = "engineer"
    ANALYST = "analyst"
    SERVICE = "service"


class Permission(StrEnum):
    """``resource:action``: one thing a caller may do."""

    PLATFORM_READ = "platform:read"
    KEYS_MANAGE = "keys:manage"
    LAKE_TABLE_READ = "lake.table:read"
    LAKE_TABLE_WRITE = "lake.table:write"
    STREAM_READ = "stream:read"
    STREAM_PUBLISH = "stream:publish"
    STREAM_DEPLOY = "stream:deploy"
    MODEL_READ = "model:read"
    MODEL_TRAIN = "model:train"
    MODEL_PROMOTE = "model:promote"
    MODEL_PREDICT = "model:predict"
    PIPELINE_RUN = "pipeline:run"
    # Sensitive (encrypted) columns in the clear; without it they are masked.
    LAKE_TABLE_DECRYPT = "lake.table:decrypt"
    AUDIT_READ = "audit:read"
    USERS_MANAGE = "users:manage"


_ALL = frozenset(Permission)
ROLE_PERMISSIONS: dict[Role, frozenset[Permission]] = {
    Role.ADMIN: _ALL,
    # Builds and runs everything (sensitive columns included), but manages no identities
    # and does not read the audit log that records its own calls.
    Role.ENGINEER: _ALL - {Permission.KEYS_MANAGE, Permission.USERS_MANAGE, Permission.AUDIT_READ},
    # Read-only: the platform's state, Lake tables, streams' state and outputs, the
    # model registry.
    Role.ANALYST: frozenset(
        {
            Permission.PLATFORM_READ,
            Permission.LAKE_TABLE_READ,
            Permission.STREAM_READ,
            Permission.MODEL_READ,
        }
    ),
    # Machines: ingest into Lake, push stream events, ask for predictions.
    Role.SERVICE: frozenset(
        {Permission.LAKE_TABLE_WRITE, Permission.STREAM_PUBLISH, Permission.MODEL_PREDICT}
    ),
}
ALLOWED_ROLES = ", ".join(role.value for role in Role)


def parse_role(value: Role | str) -> Role:
    """``value`` as a ``Role``; ``InvalidInputError`` naming the allowed roles otherwise."""
    try:
        return Role(value.strip().lower() if isinstance(value, str) else value)
    except ValueError:
        raise InvalidInputError(
            field="role", value=value, allowed=f"one of {ALLOWED_ROLES}"
        ) from None


def parse_permission(value: Permission | str) -> Permission:
    """``value`` as a ``Permission``; ``InvalidInputError`` listing the known ones otherwise."""
    try:
        return Permission(value)
    except ValueError:
        known = ", ".join(p.value for p in Permission)
        raise InvalidInputError(
            field="permission", value=value, allowed=f"one of {known}"
        ) from None


def permissions_of(role: Role | str) -> frozenset[Permission]:
    """Every permission ``role`` grants."""
    return ROLE_PERMISSIONS[parse_role(role)]


def has_permission(role: Role | str, permission: Permission | str) -> bool:
    """Whether ``role`` grants ``permission``; unknown names raise ``InvalidInputError``."""
    return parse_permission(permission) in permissions_of(role)


def require(principal: Principal, permission: Permission | str) -> None:
    """Raise ``PermissionDeniedError`` unless the caller's role grants ``permission``."""
    if not has_permission(principal.role, permission):
        raise PermissionDeniedError(role=str(principal.role), permission=str(permission))
