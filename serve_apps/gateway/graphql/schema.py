"""The GraphQL schema: every area's queries and mutations in one ``Query`` and ``Mutation``.

``field_permissions`` lists what each root field demands (its ``Needs``), which is how
the every-route security test and the docs learn it without a list kept by hand.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any, Literal

import strawberry
from strawberry.types.base import StrawberryObjectDefinition

from serve_apps.gateway.graphql.context import Needs
from serve_apps.gateway.graphql.lake import LakeQuery
from serve_apps.gateway.graphql.models import ModelsMutation, ModelsQuery
from serve_apps.gateway.graphql.operations import OperationsMutation, OperationsQuery

RootKind = Literal["query", "mutation"]


@strawberry.type(description="Read the platform: Lake, pipelines, Forge, streams, models.")
class Query(LakeQuery, OperationsQuery, ModelsQuery):
    pass


@strawberry.type(description="The mutations REST also offers: alias moves, stream stops.")
class Mutation(ModelsMutation, OperationsMutation):
    pass


class GatewaySchema(strawberry.Schema):
    """Strawberry's schema, quiet about errors: the endpoint reports and logs them."""

    def process_errors(self, errors: Any, execution_context: Any = None) -> None:
        # Strawberry would log every error with a traceback, a refused permission or an
        # unknown table included; ``errors.error_entry`` logs the unexpected ones only.
        return None


def build_schema() -> GatewaySchema:
    """The schema the endpoint serves."""
    return GatewaySchema(query=Query, mutation=Mutation)


@dataclass(frozen=True)
class RootField:
    """A root field as a client names it, and what it demands (None: nothing declared)."""

    kind: RootKind
    name: str
    needs: Needs | None


def root_fields(schema: strawberry.Schema) -> Iterator[RootField]:
    """Every query and mutation field with its declared ``Needs``."""
    kinds: tuple[RootKind, ...] = ("query", "mutation")
    for kind in kinds:
        definition = schema.get_type_by_name(kind.capitalize())
        if not isinstance(definition, StrawberryObjectDefinition):
            continue
        for field in definition.fields:
            needs = next((e for e in field.extensions if isinstance(e, Needs)), None)
            yield RootField(kind, schema.config.name_converter.get_graphql_name(field), needs)
