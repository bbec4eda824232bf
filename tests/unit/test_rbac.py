"""Roles and permissions: the table, lookups and refusals."""

from __future__ import annotations

import re

import pytest

from cluster.errors import InvalidInputError, PermissionDeniedError
from cluster.security.principal import Principal
from cluster.security.rbac import (
    ROLE_PERMISSIONS,
    Permission,
    Role,
    has_permission,
    parse_role,
    permissions_of,
    require,
)

READ_ONLY = {"platform:read", "lake.table:read", "stream:read", "model:read"}


def test_permissions_are_resource_colon_action() -> None:
    for permission in Permission:
        assert re.fullmatch(r"[a-z]+(\.[a-z]+)*:[a-z]+", permission.value), permission


def test_every_role_has_an_entry() -> None:
    assert set(ROLE_PERMISSIONS) == set(Role)


def test_admin_has_everything() -> None:
    assert permissions_of(Role.ADMIN) == frozenset(Permission)


def test_engineer_has_everything_but_identities_and_audit() -> None:
    assert permissions_of("engineer") == frozenset(Permission) - {
        Permission.KEYS_MANAGE,
        Permission.USERS_MANAGE,
        Permission.AUDIT_READ,
    }
    for permission in ("lake.table:write", "stream:deploy", "model:promote", "lake.table:decrypt"):
        assert has_permission("engineer", permission)


def test_analyst_is_read_only() -> None:
    assert permissions_of("analyst") == READ_ONLY
    for permission in ("lake.table:write", "stream:deploy", "model:promote", "keys:manage"):
        assert not has_permission(Role.ANALYST, permission)


def test_service_writes_lake_predicts_and_publishes_events() -> None:
    assert permissions_of("service") == {"lake.table:write", "model:predict", "stream:publish"}
    assert not has_permission("service", "lake.table:read")
    assert not has_permission("service", "keys:manage")


@pytest.mark.parametrize("name", ["root", "", "admins"])
def test_unknown_role_names_the_allowed_ones(name: str) -> None:
    with pytest.raises(InvalidInputError, match="one of admin, engineer, analyst, service"):
        parse_role(name)
    with pytest.raises(InvalidInputError):
        has_permission(name, "platform:read")


def test_role_names_are_case_insensitive() -> None:
    assert parse_role(" Admin ") is Role.ADMIN


def test_unknown_permission_is_an_error_not_a_silent_deny() -> None:
    with pytest.raises(InvalidInputError, match="permission"):
        has_permission("admin", "lake.tables:read")


def test_require_passes_or_names_role_and_permission() -> None:
    analyst = Principal(key_id="key_000000000001", name="bi", role=Role.ANALYST)
    require(analyst, "lake.table:read")
    require(analyst, Permission.MODEL_READ)
    with pytest.raises(PermissionDeniedError) as caught:
        require(analyst, "lake.table:write")
    assert "'analyst'" in caught.value.message
    assert "'lake.table:write'" in caught.value.message
    assert caught.value.http_status == 403
