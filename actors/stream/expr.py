"""Arrow compute expressions as data: the ``derive`` (map) language of topologies.

An expression is a tree, loadable from YAML, compiled to one ``pyarrow.compute``
``Expression`` evaluated per record batch (never per event, never ``eval``):

* ``{field: amount}``: a column;
* ``{call: multiply, args: [{field: amount}, 0.9]}``: a *scalar* Arrow compute function
  (``add``, ``multiply``, ``utf8_lower``, ``if_else``, ``cast`` ...); bare YAML scalars
  in ``args`` are literals; ``options`` go to the function's options class
  (``{call: cast, args: [{field: n}], options: {target_type: double}}``);
* ``{literal: 3}``: a literal, for a whole derived column of one value.

Aggregate and vector functions are refused: their results would depend on how the
stream is cut into batches.
"""

from __future__ import annotations

from typing import Any

import pyarrow as pa
import pyarrow.compute as pc
from pydantic import BaseModel, ConfigDict, Field, field_validator

from cluster.errors import InvalidInputError


class Expr(BaseModel):
    """One node: exactly one of ``field``, ``call`` (with ``args``/``options``) or ``literal``."""

    model_config = ConfigDict(frozen=True, extra="forbid")
    field: str | None = Field(default=None, description="a column of the event batch")
    call: str | None = Field(default=None, description="a scalar pyarrow.compute function")
    args: list[Expr | Any] = Field(default_factory=list, description="arguments of `call`")
    options: dict[str, Any] = Field(default_factory=dict, description="options of `call`")
    literal: Any = Field(default=None, description="a constant value")

    @field_validator("call")
    @classmethod
    def _scalar_function(cls, name: str | None) -> str | None:
        if name is None:
            return None
        try:
            kind = pc.get_function(name).kind
        except pa.ArrowKeyError:
            raise ValueError(
                f"unknown Arrow compute function {name!r}; see pyarrow.compute.list_functions()"
            ) from None
        if kind != "scalar":
            raise ValueError(
                f"{name!r} is a {kind} function; derive takes scalar functions only, whose "
                "result for a row depends on that row alone"
            )
        return name

    def model_post_init(self, _: Any) -> None:
        # A dump (``model_dump``) carries ``literal: None`` beside a field or a call.
        literal = "literal" in self.model_fields_set and not (
            self.literal is None and (self.field is not None or self.call is not None)
        )
        chosen = [self.field is not None, self.call is not None, literal]
        if sum(chosen) != 1:
            raise ValueError("an expression needs exactly one of field, call or literal")
        if (self.args or self.options) and self.call is None:
            raise ValueError("args and options belong to a `call` expression")

    def columns(self) -> set[str]:
        """The input columns this expression reads."""
        if self.field is not None:
            return {self.field}
        found: set[str] = set()
        for arg in self.args:
            if isinstance(arg, Expr):
                found |= arg.columns()
        return found

    def compile(self) -> pc.Expression:
        """The ``pyarrow.compute.Expression`` this tree stands for."""
        if self.field is not None:
            return pc.field(self.field)
        if self.call is None:
            return pc.scalar(self.literal)
        args = [a.compile() if isinstance(a, Expr) else pc.scalar(a) for a in self.args]
        options = _options(self.call, self.options) if self.options else None
        try:
            return pc.Expression._call(self.call, args, options)
        except (pa.ArrowInvalid, pa.ArrowNotImplementedError, TypeError) as exc:
            raise InvalidInputError(
                field=f"derive call {self.call}", value=self.args, allowed=str(exc)
            ) from None


def _options(name: str, options: dict[str, Any]) -> Any:
    """The function's options object (``RoundOptions``, ``CastOptions`` ...) from a dict."""
    cls = getattr(pc, pc.get_function(name)._doc.options_class or "", None)
    if cls is None:
        raise InvalidInputError(
            field=f"derive call {name} options", value=options, allowed=f"{name} takes no options"
        )
    values = dict(options)
    if isinstance(values.get("target_type"), str):
        from actors.ingest.transforms import arrow_type

        values["target_type"] = arrow_type(values["target_type"])
    try:
        return cls(**values)
    except (TypeError, ValueError) as exc:
        raise InvalidInputError(
            field=f"derive call {name} options", value=options, allowed=str(exc)
        ) from None
