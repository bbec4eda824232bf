"""How much one GraphQL request may ask for: depth, aliases and an estimated cost.

Measured on the parsed document before anything runs, with the request's variables, so
a refused query costs the platform one parse. The cost estimate counts every field the
query selects, multiplied by the sizes of the lists around it: a list field's size is
its ``limit`` argument (its default when not given; ``default_list_size`` for lists
without one), so ``models { versions(limit: 500) { metrics } }`` costs what it could
return. Introspection fields (``__schema``, ``__type``) are not counted: the endpoint
answers authenticated callers only, and the schema's size bounds them.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, ClassVar

from graphql import (
    DocumentNode,
    FieldNode,
    FragmentDefinitionNode,
    FragmentSpreadNode,
    GraphQLField,
    GraphQLInterfaceType,
    GraphQLList,
    GraphQLNonNull,
    GraphQLObjectType,
    GraphQLSchema,
    GraphQLType,
    InlineFragmentNode,
    IntValueNode,
    OperationDefinitionNode,
    SelectionSetNode,
    VariableNode,
)

from cluster.errors import DatapunkError

MAX_QUERY_CHARS = 20_000


class QueryTooComplexError(DatapunkError):
    """A GraphQL document over one of the endpoint's limits; nothing of it ran."""

    code: ClassVar[str] = "query_too_complex"
    http_status: ClassVar[int] = 400

    def __init__(self, *, measure: str, value: int, limit: int) -> None:
        super().__init__(
            f"the query's {measure} is {value}, over the limit of {limit}; select fewer "
            "fields, ask for smaller `limit`s, or split it into several queries",
            measure=measure,
            value=value,
            limit=limit,
        )


@dataclass(frozen=True)
class GraphQLLimits:
    """The endpoint's limits (``max_tokens`` bounds parsing itself)."""

    max_depth: int = 8
    max_cost: int = 10_000
    max_aliases: int = 15
    max_tokens: int = 2_000
    default_list_size: int = 50


@dataclass
class Measures:
    """What ``measure`` found: nesting depth, aliases, estimated cost."""

    depth: int = 0
    aliases: int = 0
    cost: int = 0


def _unwrap(kind: GraphQLType) -> tuple[GraphQLType, bool]:
    """The named type under ``kind``'s wrappers, and whether a list is among them."""
    is_list = False
    while isinstance(kind, GraphQLNonNull | GraphQLList):
        is_list = is_list or isinstance(kind, GraphQLList)
        kind = kind.of_type
    return kind, is_list


class _Walk:
    def __init__(
        self,
        schema: GraphQLSchema,
        fragments: Mapping[str, FragmentDefinitionNode],
        variables: Mapping[str, Any],
        limits: GraphQLLimits,
    ) -> None:
        self.schema = schema
        self.fragments = fragments
        self.variables = variables
        self.limits = limits
        self.found = Measures()

    def _count(self, cost: int) -> None:
        self.found.cost += cost
        # Stop as soon as it is over: fragments can make the full count explode.
        if self.found.cost > self.limits.max_cost:
            raise QueryTooComplexError(
                measure="estimated cost", value=self.found.cost, limit=self.limits.max_cost
            )

    def list_size(self, node: FieldNode, field: GraphQLField) -> int:
        declared = field.args.get("limit")
        default = declared.default_value if declared is not None else None
        size = default if isinstance(default, int) else self.limits.default_list_size
        for argument in node.arguments or ():
            if argument.name.value != "limit":
                continue
            value = argument.value
            if isinstance(value, IntValueNode):
                size = int(value.value)
            elif isinstance(value, VariableNode):
                given = self.variables.get(value.name.value)
                if isinstance(given, int) and not isinstance(given, bool):
                    size = given
        return max(size, 1)

    def selections(
        self,
        selection_set: SelectionSetNode,
        parent: GraphQLType | None,
        multiplier: int,
        depth: int,
        seen: frozenset[str],
    ) -> None:
        for node in selection_set.selections:
            if isinstance(node, FieldNode):
                self.field(node, parent, multiplier, depth, seen)
            elif isinstance(node, FragmentSpreadNode):
                name = node.name.value
                fragment = self.fragments.get(name)
                if fragment is None or name in seen:
                    continue  # validation reports unknown and cyclic fragments
                named = self.schema.get_type(fragment.type_condition.name.value)
                self.selections(fragment.selection_set, named, multiplier, depth, seen | {name})
            elif isinstance(node, InlineFragmentNode):
                condition = node.type_condition
                kind = parent if condition is None else self.schema.get_type(condition.name.value)
                self.selections(node.selection_set, kind, multiplier, depth, seen)

    def field(
        self,
        node: FieldNode,
        parent: GraphQLType | None,
        multiplier: int,
        depth: int,
        seen: frozenset[str],
    ) -> None:
        if node.name.value.startswith("__"):
            return
        if node.alias is not None:
            self.found.aliases += 1
            if self.found.aliases > self.limits.max_aliases:
                raise QueryTooComplexError(
                    measure="number of aliases",
                    value=self.found.aliases,
                    limit=self.limits.max_aliases,
                )
        self._count(multiplier)
        fields = (
            parent.fields if isinstance(parent, GraphQLObjectType | GraphQLInterfaceType) else {}
        )
        definition = fields.get(node.name.value)
        # An unknown field (validation reports it) still counts, and so does its depth.
        kind, is_list = (None, False) if definition is None else _unwrap(definition.type)
        size = self.list_size(node, definition) if definition is not None and is_list else 1
        if node.selection_set is None:
            if is_list:
                self._count(multiplier * size)
            return
        self.found.depth = max(self.found.depth, depth + 1)
        if depth + 1 > self.limits.max_depth:
            raise QueryTooComplexError(
                measure="depth", value=depth + 1, limit=self.limits.max_depth
            )
        self.selections(node.selection_set, kind, multiplier * size, depth + 1, seen)


def measure(
    schema: GraphQLSchema,
    document: DocumentNode,
    variables: Mapping[str, Any] | None,
    limits: GraphQLLimits,
    operation_name: str | None = None,
) -> Measures:
    """Depth, aliases and estimated cost of the operation to run; raises over a limit.

    Every operation in the document is measured when none is named, so a document
    cannot hide an expensive operation behind a cheap one.
    """
    fragments = {
        d.name.value: d for d in document.definitions if isinstance(d, FragmentDefinitionNode)
    }
    walk = _Walk(schema, fragments, variables or {}, limits)
    for definition in document.definitions:
        if not isinstance(definition, OperationDefinitionNode):
            continue
        if operation_name is not None and (
            definition.name is None or definition.name.value != operation_name
        ):
            continue
        root = schema.get_root_type(definition.operation)
        walk.selections(definition.selection_set, root, 1, 0, frozenset())
    return walk.found
