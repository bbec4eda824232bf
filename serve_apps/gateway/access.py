"""Object-level checks as the gateway's routes call them (OWASP API1:2023, BOLA).

Each route that names an object calls one of these *before* it touches a backend, so a
hidden object's 404 is the same whether it exists or not (``cluster.security.grants``
explains the rules and the 404-versus-403 choice). Every check also notes its object on
``request.state`` for the audit log, and a hidden object's refusal is marked as denied
there (its status, 404, would not say so).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any, Literal, TypeVar

from fastapi import Request

from cluster.security import grants
from cluster.security.grants import HiddenObjectError, Scope
from cluster.security.principal import Principal
from cluster.security.rbac import Permission
from serve_apps.gateway.auth import PermissionCheck

T = TypeVar("T")
AUDIT_TARGETS = "audit_targets"
AUDIT_DENIED = "audit_denied"
TargetKind = Literal["table", "namespace", "model", "stream"]


@dataclass(frozen=True, slots=True)
class Target:
    """An object a call (or a socket) acts on, by kind and name: ``Target("stream", "x")``."""

    kind: TargetKind
    name: str

    @property
    def scope(self) -> Scope:
        """As ``cluster.security.grants`` names objects (a table name normalised)."""
        if self.kind == "table":
            return grants.table(self.name)
        return Scope(grants.ScopeKind(self.kind), self.name)


def authorize(principal: Principal, permission: Permission | str, target: Target | None) -> None:
    """Role and grants together (no request at hand: WebSockets); 403 or 404 as ``check``."""
    grants.require_on(principal, permission, None if target is None else target.scope)


@dataclass(frozen=True)
class ObjectPermissionCheck(PermissionCheck):
    """``PermissionCheck`` that also checks the object its path names (``{name}``).

    Declared once per router constant (``READ = Depends(object_permission(...))``), so
    every route under ``/models/{name}/...`` or ``/streams/{name}/...`` is checked on its
    object before its handler runs, including routes added later. A route without the
    path parameter (a listing, a create with the name in its body) gets the plain
    permission check and must filter or check itself.
    """

    kind: TargetKind = "model"
    param: str = "name"

    def __call__(self, request: Request) -> Principal:
        principal = super().__call__(request)
        name = request.path_params.get(self.param)
        if isinstance(name, str):
            check(request, self.permission, Target(self.kind, name).scope)
        return principal


def object_permission(name: str, kind: TargetKind, param: str = "name") -> ObjectPermissionCheck:
    """The route dependency demanding ``name`` on the ``kind`` object path ``param`` names."""
    return ObjectPermissionCheck(name, kind, param)


def principal_of(request: Request) -> Principal:
    """The caller the v1 router's dependency authenticated."""
    principal: Principal = request.state.principal
    return principal


def note_target(request: Request, obj: Scope | None) -> None:
    """Remember ``obj`` as (one of) the call's targets, for the audit entry."""
    if obj is None:
        return
    targets: list[str] = request.scope.setdefault("state", {}).setdefault(AUDIT_TARGETS, [])
    text = str(obj)
    if text not in targets:
        targets.append(text)


def note_denied(request: Request, obj: Scope | None) -> None:
    """Mark the call as refused for the audit log (a hidden object's 404)."""
    note_target(request, obj)
    request.scope.setdefault("state", {})[AUDIT_DENIED] = True


def check(request: Request, permission: Permission | str, obj: Scope | None) -> None:
    """Refuse the call unless the caller may use ``permission`` on ``obj`` (403 or 404)."""
    note_target(request, obj)
    try:
        grants.require_on(principal_of(request), permission, obj)
    except HiddenObjectError:
        note_denied(request, obj)
        raise


def check_table(request: Request, permission: Permission | str, name: str) -> str:
    """``check`` on Lake table ``name``; returns its full ``ns.table`` name."""
    obj = grants.table(name)
    check(request, permission, obj)
    return obj.name


def check_tables(request: Request, permission: Permission | str, names: Iterable[str]) -> None:
    """``check`` on each table (a SQL query's, a topology's sinks)."""
    for name in names:
        check_table(request, permission, name)


def check_sql(request: Request, permission: Permission | str, query: str) -> None:
    """``check`` on every Lake table ``query`` reads, as Lake's own SQL parser finds them.

    Only for a restricted caller: the parse (cached) is what ``LakeService.sql`` runs
    anyway, and a query it refuses is refused here with the same error.
    """
    if not grants.is_restricted(principal_of(request)):
        return
    from actors.lake.sql import referenced_tables  # DuckDB: imported when first needed

    check_tables(request, permission, referenced_tables(query))


def visible(
    request: Request,
    permission: Permission | str,
    items: Iterable[T],
    obj_of: Callable[[T], Scope | None],
) -> list[T]:
    """The ``items`` the caller may use ``permission`` on (listings filter, never 403)."""
    return grants.visible(principal_of(request), permission, items, obj_of)


def model_of_run(record: dict[str, Any]) -> Scope:
    """The model a Forge run record trains: registered name, else the spec's."""
    spec = record.get("spec") or {}
    registry = spec.get("registry") or {}
    name = record.get("model_name") or registry.get("model_name") or record.get("name") or ""
    return grants.model(str(name))
