"""Scoped grants: object-level authorization on top of roles.

A role says *what* a caller may do (``lake.table:read``); a grant says *where*: one
permission on one scope, ``table:ns.name``, ``namespace:ns``, ``model:NAME``,
``stream:NAME`` or ``*`` (everywhere). The rules:

* A principal with **no** grants has its role's permissions everywhere (keys minted
  before grants existed keep working unchanged).
* A principal **with** grants may use a permission on an object only when its role
  has the permission **and** one of its grants names that permission on a scope that
  covers the object. Grants only narrow a role; they never add to it.
* ``namespace:ns`` covers the namespace and every table in it; ``*`` covers every
  object and also the actions that name none (``keys:manage``, ``platform:read``).

Refusals, following OWASP API1:2023 (broken object-level authorization): an object that
none of the caller's grants covers is answered exactly as a missing one, 404, whether it
exists or not, and *before* anything looks it up; so a key for table A cannot learn that
table B exists. An object the caller can see (a grant covers it for another permission)
but not use this way is a 403 naming the permission and the object. A role without the
permission at all stays the plain role 403 (that reveals nothing about objects).

Everything here is a pure function of the principal and the object; the gateway's
routes call ``require_on`` before touching a backend and filter listings with
``allowed``.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from enum import StrEnum
from typing import TYPE_CHECKING, Any, TypeVar

from cluster.errors import DatapunkError, InvalidInputError, NotFoundError, PermissionDeniedError
from cluster.security.rbac import Permission, parse_permission, permissions_of

if TYPE_CHECKING:
    from cluster.security.principal import Principal

T = TypeVar("T")
DEFAULT_NAMESPACE = "default"  # as Lake reads a table name without a dot
MAX_NAME_LENGTH = 200
_IDENT = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
_OBJECT_NAME = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.:@-]*")


class ScopeKind(StrEnum):
    """What a grant's scope (or an object) is."""

    TABLE = "table"
    NAMESPACE = "namespace"
    MODEL = "model"
    STREAM = "stream"
    ANY = "*"


@dataclass(frozen=True, slots=True, order=True)
class Scope:
    """A grant's scope, or the object a call acts on: ``table:sales.orders``, ``*``."""

    kind: ScopeKind
    name: str = ""

    def __str__(self) -> str:
        return "*" if self.kind is ScopeKind.ANY else f"{self.kind.value}:{self.name}"


ANY_SCOPE = Scope(ScopeKind.ANY)
_TABLE_KINDS = frozenset({ScopeKind.TABLE, ScopeKind.NAMESPACE})
# The scope kinds a grant of each permission may name besides '*'. Permissions over no
# object (identities, the audit log, the platform's status) take '*' only; so does any
# permission added later until it is listed here: fail closed.
SCOPE_KINDS: dict[Permission, frozenset[ScopeKind]] = {
    Permission.LAKE_TABLE_READ: _TABLE_KINDS,
    Permission.LAKE_TABLE_WRITE: _TABLE_KINDS,
    Permission.LAKE_TABLE_DECRYPT: _TABLE_KINDS,
    Permission.PIPELINE_RUN: _TABLE_KINDS,
    Permission.STREAM_READ: frozenset({ScopeKind.STREAM}),
    Permission.STREAM_PUBLISH: frozenset({ScopeKind.STREAM}),
    Permission.STREAM_DEPLOY: frozenset({ScopeKind.STREAM}),
    Permission.MODEL_READ: frozenset({ScopeKind.MODEL}),
    Permission.MODEL_PROMOTE: frozenset({ScopeKind.MODEL}),
    Permission.MODEL_PREDICT: frozenset({ScopeKind.MODEL}),
    # A training run reads a table and registers a model: scoped to either or both.
    Permission.MODEL_TRAIN: frozenset({ScopeKind.MODEL, *_TABLE_KINDS}),
}
SCOPE_FORMS = "*, table:NAMESPACE.TABLE, namespace:NAMESPACE, model:NAME or stream:NAME"


@dataclass(frozen=True, slots=True, order=True)
class Grant:
    """One permission on one scope."""

    permission: Permission
    scope: Scope

    def __str__(self) -> str:
        return f"{self.permission.value} on {self.scope}"

    def as_dict(self) -> dict[str, str]:
        return {"permission": self.permission.value, "scope": str(self.scope)}


class ObjectAccessDeniedError(PermissionDeniedError):
    """The caller's grants do not allow this permission on this object (which it may see)."""

    def __init__(self, *, principal: str, permission: str, target: str) -> None:
        where = "on any object" if target == "" else f"on {target}"
        fix = target or "*"
        DatapunkError.__init__(
            self,
            f"{principal} is restricted by grants that do not allow {permission!r} {where}; "
            f"ask an admin for one (`datapunk grants add KEY_ID {permission} {fix}`)",
            principal=principal,
            permission=permission,
            target=target,
        )


class HiddenObjectError(NotFoundError):
    """An object outside every grant of the caller: answered as if it did not exist."""

    def __init__(self, *, target: Scope) -> None:
        DatapunkError.__init__(
            self,
            f"{target.kind.value} {target.name!r} was not found among the objects this caller "
            "may use; GET /api/v1/whoami lists its grants",
            kind=target.kind.value,
            name=target.name,
        )


# --- parsing ---------------------------------------------------------------------------


def _bad_scope(text: object, why: str) -> InvalidInputError:
    return InvalidInputError(field="scope", value=text, allowed=f"{SCOPE_FORMS}: {why}")


def table_name(name: str) -> str:
    """``ns.table`` as Lake resolves it (no dot: namespace ``default``); 422 otherwise."""
    parts = name.split(".") if isinstance(name, str) else []
    if not 1 <= len(parts) <= 2 or not all(_IDENT.fullmatch(part) for part in parts):
        raise InvalidInputError(
            field="table",
            value=name,
            allowed="namespace.table or table, each part letters, digits and _ "
            "not starting with a digit",
        )
    return ".".join(parts) if len(parts) == 2 else f"{DEFAULT_NAMESPACE}.{parts[0]}"


def parse_scope(text: Scope | str) -> Scope:
    """``*``, ``table:ns.t`` (``table:t`` means ``default.t``), ``namespace:ns``,
    ``model:NAME`` or ``stream:NAME`` as a ``Scope``; ``InvalidInputError`` otherwise."""
    if isinstance(text, Scope):
        return text
    raw = text.strip() if isinstance(text, str) else ""
    if raw == "*":
        return ANY_SCOPE
    kind_text, sep, name = raw.partition(":")
    try:
        kind = ScopeKind(kind_text.strip().lower())
    except ValueError:
        raise _bad_scope(text, f"unknown kind {kind_text!r}") from None
    name = name.strip()
    if not sep or kind is ScopeKind.ANY or not name:
        raise _bad_scope(text, "KIND:NAME with a name")
    if kind is ScopeKind.TABLE:
        try:
            return Scope(kind, table_name(name))
        except InvalidInputError as exc:
            raise _bad_scope(text, exc.fields["allowed"]) from None
    if kind is ScopeKind.NAMESPACE:
        if not _IDENT.fullmatch(name):
            raise _bad_scope(text, "a namespace is letters, digits and _")
        return Scope(kind, name)
    if len(name) > MAX_NAME_LENGTH or not _OBJECT_NAME.fullmatch(name):
        raise _bad_scope(
            text, f"a name of letters, digits and _ . : @ - (at most {MAX_NAME_LENGTH})"
        )
    return Scope(kind, name)


def make_grant(permission: Permission | str, scope: Scope | str) -> Grant:
    """A validated ``Grant``: a known permission on a scope of a kind that fits it."""
    parsed = parse_permission(permission)
    where = parse_scope(scope)
    kinds = SCOPE_KINDS.get(parsed, frozenset())
    if where.kind is not ScopeKind.ANY and where.kind not in kinds:
        fits = ", ".join(sorted(f"{k.value}:NAME" for k in kinds))
        allowed = f"* or {fits}" if fits else "* (it acts on no single object)"
        raise InvalidInputError(
            field="scope", value=str(where), allowed=f"for {parsed.value}: {allowed}"
        )
    return Grant(parsed, where)


# --- objects ---------------------------------------------------------------------------


def table(name: str) -> Scope:
    """The object for Lake table ``name`` (normalised as Lake reads it)."""
    return Scope(ScopeKind.TABLE, table_name(name))


def namespace(name: str) -> Scope:
    return Scope(ScopeKind.NAMESPACE, name)


def model(name: str) -> Scope:
    return Scope(ScopeKind.MODEL, name)


def stream(name: str) -> Scope:
    return Scope(ScopeKind.STREAM, name)


# --- decisions -------------------------------------------------------------------------


def covers(scope: Scope, obj: Scope | None) -> bool:
    """Whether a grant on ``scope`` reaches ``obj`` (``None``: an action on no object)."""
    if scope.kind is ScopeKind.ANY:
        return True
    if obj is None:
        return False
    if scope == obj:
        return True
    return (
        scope.kind is ScopeKind.NAMESPACE
        and obj.kind is ScopeKind.TABLE
        and obj.name.partition(".")[0] == scope.name
    )


def is_restricted(principal: Principal) -> bool:
    """Whether grants narrow ``principal`` (else its role applies everywhere)."""
    return bool(principal.grants)


def allowed(principal: Principal, permission: Permission | str, obj: Scope | None = None) -> bool:
    """Whether ``principal`` may use ``permission`` on ``obj`` (``None``: on no object)."""
    wanted = parse_permission(permission)
    if wanted not in permissions_of(principal.role):
        return False
    if not principal.grants:
        return True
    return any(g.permission == wanted and covers(g.scope, obj) for g in principal.grants)


def allowed_within(principal: Principal, permission: Permission | str, ns: str) -> bool:
    """Whether ``permission`` reaches namespace ``ns`` or any table in it (listings)."""
    if allowed(principal, permission, namespace(ns)):
        return True
    wanted = parse_permission(permission)
    if wanted not in permissions_of(principal.role):
        return False
    return any(
        g.permission == wanted
        and g.scope.kind is ScopeKind.TABLE
        and g.scope.name.partition(".")[0] == ns
        for g in principal.grants
    )


def can_see(principal: Principal, obj: Scope) -> bool:
    """Whether any grant covers ``obj``, for any permission: else it is hidden (404)."""
    if not principal.grants:
        return True
    for grant in principal.grants:
        if covers(grant.scope, obj):
            return True
        inside = grant.scope.kind is ScopeKind.TABLE and obj.kind is ScopeKind.NAMESPACE
        if inside and grant.scope.name.partition(".")[0] == obj.name:
            return True
    return False


def _who(principal: Principal) -> str:
    return f"{getattr(principal, 'kind', 'key')} {principal.key_id}"


def require_on(principal: Principal, permission: Permission | str, obj: Scope | None) -> None:
    """Return if ``principal`` may use ``permission`` on ``obj``; else raise.

    ``PermissionDeniedError`` (403) when the role lacks the permission;
    ``HiddenObjectError`` (404) when no grant covers ``obj`` at all;
    ``ObjectAccessDeniedError`` (403) when ``obj`` is visible but not for this.
    """
    wanted = parse_permission(permission)
    if allowed(principal, wanted, obj):
        return
    if wanted not in permissions_of(principal.role):
        raise PermissionDeniedError(role=str(principal.role), permission=wanted.value)
    if obj is not None and not can_see(principal, obj):
        raise HiddenObjectError(target=obj)
    raise ObjectAccessDeniedError(
        principal=_who(principal), permission=wanted.value, target="" if obj is None else str(obj)
    )


def require_somewhere(principal: Principal, permission: Permission | str) -> None:
    """The route-level check of a restricted caller: some grant names ``permission``.

    A permission over no object (``keys:manage``, ``audit:read``) needs a ``*`` grant;
    the per-object check (``require_on``) follows inside the route.
    """
    wanted = parse_permission(permission)
    if not principal.grants or wanted not in permissions_of(principal.role):
        return  # unrestricted, or the role check (which runs first) refuses it
    if SCOPE_KINDS.get(wanted):
        usable = any(g.permission == wanted for g in principal.grants)
    else:
        usable = allowed(principal, wanted, None)
    if not usable:
        raise ObjectAccessDeniedError(principal=_who(principal), permission=wanted.value, target="")


def visible(
    principal: Principal,
    permission: Permission | str,
    items: Iterable[T],
    obj_of: Callable[[T], Scope | None],
) -> list[T]:
    """The ``items`` whose object ``principal`` may use ``permission`` on (listings)."""
    if not principal.grants:
        return list(items)
    return [item for item in items if allowed(principal, permission, obj_of(item))]


def grants_as_dicts(grants: Iterable[Grant]) -> list[dict[str, Any]]:
    return [g.as_dict() for g in sorted(grants)]
