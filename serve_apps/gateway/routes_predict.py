"""``POST /api/v1/models/{name}/predict``: predictions from Cortex, checked here first.

The version is the ``alias``'s (``production`` when neither is given), or ``version``
as asked; an alias with a canary sends the canary's share of requests to its version
(sticky by the canary's header when it names one). The body is JSON, rows
``{"instances": [{...}]}`` or columns ``{"columns": {"x": [...]}}``, or an Arrow IPC
stream (``Content-Type: application/vnd.apache.arrow.stream``). It is validated against
the version's signature *here*, before Cortex is called: a bad body is a 422 whose
``error.problems`` lists every bad field, never a 500.

The answer is JSON ``{"model", "version", "alias", "canary", "request_id",
"predictions": [...]}``, or an Arrow IPC stream of the outputs when ``Accept`` asks for
one (the version and the rest then in ``X-Model*`` headers). Needs ``model:predict``.

No Ray in here: Cortex is the ``Cortex`` port (the Serve handle in production, a fake
in unit tests) and routing is a ``RouteCache``, so the hot path makes no database call.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Annotated, Any, ClassVar, Protocol

import numpy as np
import pyarrow as pa
from fastapi import APIRouter, Depends, Query, Request
from fastapi.responses import Response

from actors.cortex.errors import SignatureViolationError
from actors.cortex.outputs import model_id, outputs_to_arrow, outputs_to_rows
from actors.cortex.signature import (
    ARROW_STREAM_MEDIA_TYPE,
    MAX_ROWS_DEFAULT,
    parse_arrow_body,
    parse_json_body,
)
from actors.forge.registry import ALIAS_PATTERN
from cluster.errors import DatapunkError, InvalidInputError
from serve_apps.cortex.route_cache import RegistryReader, RouteCache, Target
from serve_apps.gateway import access
from serve_apps.gateway.audit_middleware import READ_ONLY
from serve_apps.gateway.openapi import ErrorBody

__all__ = [
    "Cortex",
    "PredictBackend",
    "UnsupportedMediaTypeError",
    "model_key",
    "predict_backend",
    "predict_router",
]

# Checked on the model the path names too (scoped grants: a key for model A cannot
# ask model B).
PREDICT = Depends(access.object_permission("model:predict", "model"))
DEFAULT_ALIAS = "production"
Outputs = dict[str, np.ndarray]


class Cortex(Protocol):
    """What the route needs of Cortex (``serve_apps.cortex.client.ServeCortex``)."""

    async def predict(self, key: str, features: pa.Table, request_id: str | None) -> Outputs: ...
    async def warm(self, key: str) -> Any: ...


@dataclass(frozen=True)
class PredictBackend:
    """Routing (aliases, canaries, version records) and the Cortex that predicts."""

    routes: RouteCache
    cortex: Cortex
    max_rows: int = MAX_ROWS_DEFAULT


def model_key(name: str, version: int) -> str:
    """Cortex's multiplexed id of a version (``actors.cortex.outputs.model_id``)."""
    return model_id(name, version)


def predict_backend(
    registry: RegistryReader,
    cortex: Cortex,
    *,
    refresh_s: float,
    max_rows: int = MAX_ROWS_DEFAULT,
    **route_options: Any,
) -> PredictBackend:
    """A backend whose route cache warms newly routed versions through ``cortex``.

    ``route_options`` go to ``RouteCache`` (``now``, ``draw``, ``sleep``: tests' clocks).
    """

    async def warm(name: str, version: int) -> Any:
        return await cortex.warm(model_key(name, version))

    routes = RouteCache(registry, warm, refresh_s=refresh_s, **route_options)
    return PredictBackend(routes, cortex, max_rows)


class UnsupportedMediaTypeError(DatapunkError):
    """A prediction body in a format the route does not read."""

    code: ClassVar[str] = "unsupported_media_type"
    http_status: ClassVar[int] = 415

    def __init__(self, *, content_type: str) -> None:
        super().__init__(
            f"cannot read a prediction body of type {content_type!r}: send application/json "
            f"or {ARROW_STREAM_MEDIA_TYPE} (an Arrow IPC stream)",
            content_type=content_type,
        )


def _body_problem(target: Target, problem: str) -> SignatureViolationError:
    names = [str(i.get("name")) for i in target.signature.get("inputs") or []]
    return SignatureViolationError(
        model=target.name,
        version=target.version,
        problems=[{"field": None, "row": None, "problem": problem}],
        inputs=names,
    )


def _features(target: Target, content_type: str, body: bytes, max_rows: int) -> pa.Table:
    """The body as the signature's float64 table; every problem in one 422."""
    kind = content_type.split(";", 1)[0].strip().lower()
    if kind == ARROW_STREAM_MEDIA_TYPE:
        return parse_arrow_body(
            body, target.signature, model=target.name, version=target.version, max_rows=max_rows
        )
    if kind not in ("", "application/json") and not kind.endswith("+json"):
        raise UnsupportedMediaTypeError(content_type=content_type)
    try:
        parsed = json.loads(body)
    except (ValueError, RecursionError) as exc:  # bad JSON, bad UTF-8, absurd nesting
        reason = str(exc) if not isinstance(exc, RecursionError) else "nested too deeply"
        raise _body_problem(target, f"the body is not valid JSON ({reason[:200]})") from None
    return parse_json_body(
        parsed, target.signature, model=target.name, version=target.version, max_rows=max_rows
    )


def _finite(outputs: Outputs) -> Outputs:
    """NaN and infinity are not JSON: such outputs go out as null."""
    clean = {}
    for key, value in outputs.items():
        if value.dtype.kind == "f" and not np.isfinite(value).all():
            value = np.where(np.isfinite(value), value.astype(object), np.array(None))
        clean[key] = value
    return clean


def _wants_arrow(request: Request) -> bool:
    return ARROW_STREAM_MEDIA_TYPE in request.headers.get("accept", "")


def _arrow_response(target: Target, outputs: Outputs) -> Response:
    table = outputs_to_arrow(outputs)
    sink = pa.BufferOutputStream()
    with pa.ipc.new_stream(sink, table.schema) as writer:
        writer.write_table(table)
    headers = {
        "X-Model": target.name,
        "X-Model-Version": str(target.version),
        "X-Model-Alias": target.alias or "",
        "X-Canary": "true" if target.canary else "false",
        "X-Row-Count": str(table.num_rows),
    }
    return Response(
        sink.getvalue().to_pybytes(), media_type=ARROW_STREAM_MEDIA_TYPE, headers=headers
    )


def _json_response(target: Target, outputs: Outputs, request_id: str | None) -> Response:
    body = {
        "model": target.name,
        "version": target.version,
        "alias": target.alias,
        "canary": target.canary,
        "request_id": request_id,
        "predictions": outputs_to_rows(_finite(outputs)),
    }
    return Response(json.dumps(body, allow_nan=False), media_type="application/json")


def _violation(exc: SignatureViolationError, request_id: str | None) -> Response:
    return Response(
        json.dumps(exc.to_dict(request_id), default=str),
        status_code=exc.http_status,
        media_type="application/json",
    )


def predict_router(backend: PredictBackend) -> APIRouter:
    """The predict route; include under the authenticated v1 router."""
    router = APIRouter(prefix="/models", tags=["predict"])

    @router.post(
        "/{name}/predict",
        dependencies=[PREDICT],
        openapi_extra=READ_ONLY,
        summary="Predict with a model's alias (default production) or version.",
        response_model=None,
        responses={
            200: {"content": {"application/json": {}, ARROW_STREAM_MEDIA_TYPE: {}}},
            422: {
                "model": ErrorBody,
                "description": "The body breaks the signature; error.problems lists all.",
            },
        },
    )
    async def predict(
        name: str,
        request: Request,
        alias: Annotated[
            str | None, Query(pattern=ALIAS_PATTERN, description="Default: production.")
        ] = None,
        version: Annotated[int | None, Query(ge=1, description="Instead of an alias.")] = None,
    ) -> Response:
        if alias is not None and version is not None:
            raise InvalidInputError(
                field="version", value=version, allowed="either alias or version, not both"
            )
        request_id: str | None = getattr(request.state, "request_id", None)
        target = await backend.routes.resolve(
            name,
            alias=None if version is not None else (alias or DEFAULT_ALIAS),
            version=version,
            header=request.headers.get,
        )
        body = await request.body()
        try:
            features = _features(
                target, request.headers.get("content-type", ""), body, backend.max_rows
            )
        except SignatureViolationError as exc:
            return _violation(exc, request_id)
        outputs = await backend.cortex.predict(
            model_key(target.name, target.version), features, request_id
        )
        if _wants_arrow(request):
            return _arrow_response(target, outputs)
        return _json_response(target, outputs, request_id)

    return router
