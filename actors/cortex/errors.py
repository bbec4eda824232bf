"""Cortex's typed errors: a request that breaks a model's signature, a device that is
not there, a registry version Cortex cannot serve.

``SignatureViolationError`` lists every problem of a request, not just the first: its
``to_dict`` carries them as ``error.problems`` so a client fixes all of them in one go.
"""

from __future__ import annotations

from typing import Any

from cluster.errors import DatapunkError, InvalidInputError, PlatformStateError

__all__ = [
    "MAX_PROBLEMS_IN_MESSAGE",
    "DeviceUnavailableError",
    "ModelNotServableError",
    "SignatureViolationError",
    "describe_problem",
]

# The message shows the first few problems; the body's ``problems`` list has them all.
MAX_PROBLEMS_IN_MESSAGE = 5


def describe_problem(problem: dict[str, Any]) -> str:
    """One problem as a phrase: ``row 3 field 'age': 'abc' is not a number``."""
    where = []
    if problem.get("row") is not None:
        where.append(f"row {problem['row']}")
    if problem.get("field") is not None:
        where.append(f"field {problem['field']!r}")
    prefix = " ".join(where)
    return f"{prefix}: {problem['problem']}" if prefix else str(problem["problem"])


class SignatureViolationError(InvalidInputError):
    """A prediction request does not match the model version's input signature (422)."""

    code = "signature_violation"
    http_status = 422

    def __init__(
        self,
        *,
        model: str,
        version: int,
        problems: list[dict[str, Any]],
        inputs: list[str] | None = None,
    ) -> None:
        shown = "; ".join(describe_problem(p) for p in problems[:MAX_PROBLEMS_IN_MESSAGE])
        more = len(problems) - MAX_PROBLEMS_IN_MESSAGE
        if more > 0:
            shown += f"; and {more} more (see problems)"
        wanted = ", ".join(inputs) if inputs else "the signature's inputs"
        message = (
            f"request does not match the signature of model {model!r} version {version}: "
            f"{shown}. Fix: send each of the signature's inputs: {wanted} as numbers "
            '(rows as {"instances": [{...}]} or columns as {"columns": {...}}), '
            "with no other fields, no nulls and no NaN or infinity"
        )
        # InvalidInputError's own __init__ takes (field, value, allowed); the message
        # here is richer, so set the base fields directly.
        DatapunkError.__init__(
            self,
            message,
            model=model,
            version=version,
            problems=list(problems),
            inputs=list(inputs or []),
        )

    @property
    def problems(self) -> list[dict[str, Any]]:
        """Every problem found (``field``, ``row``, ``problem``); kept in ``fields`` so it
        survives the pickling Ray does between processes."""
        problems: list[dict[str, Any]] = self.fields["problems"]
        return problems

    def to_dict(self, request_id: str | None = None) -> dict[str, Any]:
        """The error body, with every problem under ``error.problems``."""
        body = super().to_dict(request_id)
        body["error"]["problems"] = [dict(p) for p in self.problems]
        return body


class DeviceUnavailableError(PlatformStateError):
    """``cortex.device`` asks for a GPU and the replica has none."""

    def __init__(self, *, device: str, reason: str) -> None:
        super().__init__(
            f"cortex.device={device!r} but {reason}. Fix: set cortex.device to 'auto' "
            "(a GPU when there is one, else the CPU) or 'cpu', or run Cortex on a node "
            "with a GPU (cortex.num_gpus > 0)",
            device=device,
            reason=reason,
        )


class ModelNotServableError(PlatformStateError):
    """A registry version whose artifact or signature Cortex cannot serve."""

    def __init__(self, *, model: str, version: int | None, reason: str, fix: str) -> None:
        which = f"model {model!r} version {version}" if version is not None else repr(model)
        super().__init__(
            f"cannot serve {which}: {reason}. Fix: {fix}",
            model=model,
            version=version,
            reason=reason,
        )
