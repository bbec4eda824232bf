"""GraphQL errors as the gateway reports them: the Datapunk code, never a stack trace.

Each error's ``extensions`` carry ``code`` (the same code REST puts in its error body),
``status`` (the HTTP status REST would answer) and the ``request_id``. A ``DatapunkError``
keeps its message, which names the value and the fix; GraphQL's own errors (syntax,
unknown fields, wrong argument types) keep theirs as ``invalid_query``; anything else is
an ``internal_error`` whose message says only to quote the request id, while the
traceback goes to the log under that id.

``extensions.classification`` repeats the kind of failure in the words generic GraphQL
clients and tools know (Apollo's codes), so they can tell a refused request
(``BAD_USER_INPUT``, ``FORBIDDEN``, ...) from a server failure (``INTERNAL_SERVER_ERROR``)
without knowing Datapunk's codes.
"""

from __future__ import annotations

import logging
from typing import Any

from graphql import GraphQLError
from pydantic import BaseModel, Field

from cluster.errors import DatapunkError

logger = logging.getLogger(__name__)
INVALID_QUERY = "invalid_query"
INTERNAL_MESSAGE = "internal error; quote the request id"


class GraphQLErrorExtensions(BaseModel):
    code: str = Field(description="The Datapunk error code, as in REST error bodies.")
    status: int = Field(description="The HTTP status REST would answer.")
    classification: str = Field(description="The same, as Apollo's codes say it.")
    request_id: str | None = Field(None, description="Quote it when reporting a problem.")
    decision: dict[str, Any] | None = Field(
        None, description="A refused promotion's decision (code promotion_refused)."
    )


class GraphQLErrorOut(BaseModel):
    message: str
    locations: list[dict[str, int]] | None = None
    path: list[str | int] | None = None
    extensions: GraphQLErrorExtensions


class GraphQLResponse(BaseModel):
    """The GraphQL response: ``data``, and ``errors`` when there are any."""

    data: dict[str, Any] | None = None
    errors: list[GraphQLErrorOut] | None = None


_CLASSIFICATIONS = {400: "BAD_REQUEST", 401: "UNAUTHENTICATED", 403: "FORBIDDEN"}


def classification(status: int, code: str) -> str:
    """Apollo's word for an error of HTTP ``status`` (Datapunk ``code``)."""
    if code == INVALID_QUERY:
        return "GRAPHQL_VALIDATION_FAILED"
    if status >= 500:
        return "INTERNAL_SERVER_ERROR"
    return _CLASSIFICATIONS.get(status, "BAD_USER_INPUT")


def _datapunk_cause(error: GraphQLError) -> DatapunkError | None:
    cause: BaseException | None = error.original_error
    # graphql-core wraps a resolver's exception once more when it re-raises through a
    # located error; follow the chain to the first Datapunk error.
    while cause is not None:
        if isinstance(cause, DatapunkError):
            return cause
        cause = cause.original_error if isinstance(cause, GraphQLError) else None
    return None


def _unexpected(error: GraphQLError) -> bool:
    original = error.original_error
    return original is not None and not isinstance(original, GraphQLError | DatapunkError)


def error_entry(error: GraphQLError, request_id: str | None) -> dict[str, Any]:
    """One entry of the response's ``errors``."""
    cause = _datapunk_cause(error)
    extensions: dict[str, Any] = {"request_id": request_id}
    if cause is not None:
        message = cause.message
        extensions |= {"code": cause.code, "status": cause.http_status}
        if "decision" in cause.fields:
            extensions["decision"] = cause.fields["decision"]
    elif _unexpected(error):
        logger.error(
            "graphql resolver failed",
            exc_info=error.original_error,
            extra={"path": error.path, "request_id": request_id},
        )
        message = INTERNAL_MESSAGE
        extensions |= {"code": "internal_error", "status": 500}
    else:
        message = error.message
        extensions |= {"code": INVALID_QUERY, "status": 400}
    extensions["classification"] = classification(extensions["status"], extensions["code"])
    entry: dict[str, Any] = {"message": message, "extensions": extensions}
    if error.locations:
        entry["locations"] = [{"line": loc.line, "column": loc.column} for loc in error.locations]
    if error.path:
        entry["path"] = list(error.path)
    return entry


def refusal(exc: DatapunkError, request_id: str | None) -> dict[str, Any]:
    """The response for a request refused before it ran (a limit, unparseable text)."""
    extensions = {
        "code": exc.code,
        "status": exc.http_status,
        "request_id": request_id,
        "classification": classification(exc.http_status, exc.code),
    }
    return {"data": None, "errors": [{"message": exc.message, "extensions": extensions}]}
