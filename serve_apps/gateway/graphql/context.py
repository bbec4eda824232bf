"""What every resolver sees (the caller, the gateway's backends) and the field permission.

The GraphQL endpoint sits under the v1 router, so the caller is authenticated by the same
dependency as every REST route before any query runs; ``GraphQLContext`` carries that
``Principal``. Each root field declares ``Needs(permission, kind)``: the permission its
REST twin demands, checked (with the object the field's ``name`` argument names, when
scoped grants are installed) before the resolver runs. Declared, not called inside the
resolver, so the every-route security test reads what each field needs from the schema.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, TypeVar

from strawberry.extensions import FieldExtension
from strawberry.types import Info

from cluster.errors import InvalidInputError, ServiceUnavailableError
from cluster.security.grants import require_somewhere
from cluster.security.principal import Principal
from cluster.security.rbac import require
from serve_apps.gateway.access import Target, TargetKind, authorize

if TYPE_CHECKING:
    from serve_apps.gateway.asgi import GatewayDeps

B = TypeVar("B")
MAX_LIST = 500  # the most items any list field returns
MAX_ROWS = 1000  # the most rows a preview or prediction-log read returns


@dataclass(frozen=True)
class GraphQLContext:
    """The authenticated caller, the gateway's backends and the request id."""

    principal: Principal
    deps: GatewayDeps
    request_id: str | None = None


GraphQLInfo = Info[GraphQLContext, None]


class Needs(FieldExtension):
    """Demand ``permission`` before the field resolves; on the object named by ``arg``.

    ``kind`` says what ``arg`` names (a table, a model, ...): the object-level check of
    scoped grants (404 for an object no grant covers, 403 for one visible but not for
    this). Without it (or with the argument unset), the check is the one REST routes make
    before their handler: the role has the permission and, for a key narrowed by grants,
    some grant names it; the resolver then filters what it lists.
    """

    def __init__(self, permission: str, kind: TargetKind | None = None, arg: str = "name") -> None:
        super().__init__()
        self.permission = permission
        self.kind = kind
        self.arg = arg

    def check(self, info: GraphQLInfo, kwargs: dict[str, Any]) -> None:
        """Raise ``PermissionDeniedError`` unless the caller may use this field."""
        principal = info.context.principal
        value = kwargs.get(self.arg)
        if self.kind is None or value is None:
            require(principal, self.permission)
            require_somewhere(principal, self.permission)
        else:
            authorize(principal, self.permission, Target(self.kind, str(value)))

    def resolve(
        self, next_: Callable[..., Any], source: Any, info: GraphQLInfo, **kwargs: Any
    ) -> Any:
        self.check(info, kwargs)
        return next_(source, info, **kwargs)

    async def resolve_async(
        self, next_: Callable[..., Awaitable[Any]], source: Any, info: GraphQLInfo, **kwargs: Any
    ) -> Any:
        self.check(info, kwargs)
        return await next_(source, info, **kwargs)


def backend(value: B | None, area: str) -> B:
    """``value``, or 503 saying this gateway was built without ``area``."""
    if value is None:
        raise ServiceUnavailableError(
            service=area,
            target="this gateway",
            reason=f"the gateway was started without its {area} backend",
            fix=f"start the platform with the {area} service enabled (`datapunk up`)",
        )
    return value


def bounded(limit: int, most: int, field: str = "limit") -> int:
    """``limit`` when it is 1..``most``; ``InvalidInputError`` naming the range otherwise."""
    if not 1 <= limit <= most:
        raise InvalidInputError(field=field, value=limit, allowed=f"1 to {most}")
    return limit
