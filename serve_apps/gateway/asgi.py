"""The gateway's FastAPI application, built from plain dependencies (no Ray in here).

``create_app`` is the only constructor: the Serve deployment, the uvicorn baseline of
the benchmark and the unit tests all build the same app, so what is measured and
tested is what is served.
"""

from __future__ import annotations

import asyncio
import json
import tempfile
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from datetime import timedelta
from functools import partial
from pathlib import Path
from typing import Any

from fastapi import APIRouter, Depends, FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, PlainTextResponse, Response
from starlette.exceptions import HTTPException as StarletteHTTPException

from actors.ingest.state import IngestState
from actors.lake.service import LakeService
from cluster import __version__
from cluster.errors import DatapunkError
from cluster.logging import redact
from cluster.security.audit import AuditQueue
from cluster.security.audit_store import AuditStore
from cluster.security.grant_store import GrantStore
from cluster.security.grants import grants_as_dicts
from cluster.security.keys import KeyStore
from cluster.security.principal import Authenticator, Principal
from cluster.security.rbac import permissions_of
from serve_apps.gateway.audit_middleware import AuditMiddleware, register_audit_metrics
from serve_apps.gateway.auth import permission, principal_dependency
from serve_apps.gateway.decrypt import sensitive_router
from serve_apps.gateway.forge_metrics import RECENT_RUNS, forge_gauges
from serve_apps.gateway.graphql import GraphQLLimits, graphql_router
from serve_apps.gateway.metrics import GatewayMetrics
from serve_apps.gateway.middleware import RequestContextMiddleware, error_body
from serve_apps.gateway.openapi import ERROR_RESPONSES, install_openapi
from serve_apps.gateway.ratelimit import GatewayLimits, install_limits, key_limit
from serve_apps.gateway.routes_audit import audit_router
from serve_apps.gateway.routes_auth import AuthBackend, auth_public_router, auth_router
from serve_apps.gateway.routes_forge import ForgeBackend, forge_router
from serve_apps.gateway.routes_grants import grants_router
from serve_apps.gateway.routes_keys import DEFAULT_ROTATION_OVERLAP, keys_router
from serve_apps.gateway.routes_lake import lake_router
from serve_apps.gateway.routes_models import ModelsBackend, models_router
from serve_apps.gateway.routes_pipelines import JobLauncher, pipelines_router
from serve_apps.gateway.routes_predict import PredictBackend, predict_router
from serve_apps.gateway.routes_stream_sockets import streams_socket_router
from serve_apps.gateway.routes_streams import StreamOps, streams_router
from serve_apps.gateway.routes_users import users_router
from serve_apps.gateway.sockets import DEFAULT_RECHECK_S

Check = Callable[[], Awaitable[None]]
READY_TIMEOUT_S = 3.0
_HTTP_CODES = {404: "not_found", 405: "method_not_allowed", 413: "payload_too_large"}


@dataclass
class GatewayDeps:
    """What the gateway needs from the platform, injected by whoever builds it."""

    authenticator: Authenticator
    readiness: Mapping[str, Check] = field(default_factory=dict)
    platform_status: Callable[[], Awaitable[dict[str, Any]]] | None = None
    key_store: KeyStore | None = None
    lake: LakeService | None = None
    pipelines: tuple[Path, JobLauncher, IngestState] | None = None
    spool_dir: Path | None = None
    streams: StreamOps | None = None
    models: ModelsBackend | None = None
    forge: ForgeBackend | None = None
    predict: PredictBackend | None = None
    forget_key: Callable[[str], object] = lambda _key_id: None
    # Human accounts (/auth, /users) and the default overlap of an API-key rotation.
    auth: AuthBackend | None = None
    key_rotation_overlap: timedelta = DEFAULT_ROTATION_OVERLAP
    metrics: GatewayMetrics = field(default_factory=GatewayMetrics.create)
    # GraphQL's depth, alias and cost limits; how often an open WebSocket's key is re-checked.
    graphql_limits: GraphQLLimits = field(default_factory=GraphQLLimits)
    socket_recheck_s: float = DEFAULT_RECHECK_S
    # Scoped grants (/keys/{id}/grants) and the audit log: queue (middleware), store (reads).
    grant_store: GrantStore | None = None
    audit: AuditQueue | None = None
    audit_store: AuditStore | None = None
    # Rate limits and body-size limits (serve_apps/gateway/ratelimit.py); None: off.
    limits: GatewayLimits | None = None


def _json_error(status: int, code: str, message: str, request: Request) -> Response:
    request_id = getattr(request.state, "request_id", None)
    return Response(
        error_body(code, message, request_id), status_code=status, media_type="application/json"
    )


def _install_error_handlers(app: FastAPI) -> None:
    @app.exception_handler(DatapunkError)
    async def _datapunk(request: Request, exc: DatapunkError) -> Response:
        # to_dict, not just code + message: some errors carry more (every bad field of a
        # prediction body under error.problems).
        body = exc.to_dict(getattr(request.state, "request_id", None))
        return Response(
            json.dumps(body), status_code=exc.http_status, media_type="application/json"
        )

    @app.exception_handler(RequestValidationError)
    async def _validation(request: Request, exc: RequestValidationError) -> Response:
        problems = "; ".join(
            f"{'.'.join(str(p) for p in e['loc'])}: {e['msg']}" for e in exc.errors()
        )
        return _json_error(422, "invalid_input", problems, request)

    @app.exception_handler(StarletteHTTPException)
    async def _http(request: Request, exc: StarletteHTTPException) -> Response:
        code = _HTTP_CODES.get(exc.status_code, "http_error")
        message = (
            f"no route {request.method} {request.url.path}"
            if exc.status_code == 404
            else (str(exc.detail))
        )
        return _json_error(exc.status_code, code, message, request)


async def run_checks(checks: Mapping[str, Check]) -> dict[str, str]:
    """Run every check concurrently with a timeout; map name to 'ok' or the failure."""

    async def one(check: Check) -> str:
        try:
            await asyncio.wait_for(check(), READY_TIMEOUT_S)
        except TimeoutError:
            return f"timed out after {READY_TIMEOUT_S:g}s"
        except DatapunkError as exc:
            return exc.message
        except Exception as exc:
            return f"{type(exc).__name__}: {exc}"
        return "ok"

    results = await asyncio.gather(*(one(c) for c in checks.values()))
    # A driver's message may quote its URL, password and all: never show that.
    return dict(zip(checks, (redact(r) for r in results), strict=True))


def _health_routes(app: FastAPI, deps: GatewayDeps) -> None:
    @app.get("/healthz", tags=["health"], summary="Liveness: the gateway process answers.")
    async def healthz() -> dict[str, str]:
        return {"status": "ok", "version": __version__}

    @app.get("/readyz", tags=["health"], summary="Readiness: every adapter and actor pool.")
    async def readyz(request: Request) -> Response:
        checks = await run_checks(deps.readiness)
        down = {name: why for name, why in checks.items() if why != "ok"}
        if not down:
            return JSONResponse({"status": "ready", "checks": checks})
        message = "not ready: " + "; ".join(f"{name}: {why}" for name, why in down.items())
        body = {
            "status": "unavailable",
            "checks": checks,
            "error": {
                "code": "service_unavailable",
                "message": message,
                "request_id": getattr(request.state, "request_id", None),
            },
        }
        return JSONResponse(body, status_code=503)

    forge = (
        None
        if deps.forge is None
        else forge_gauges(deps.metrics.registry, partial(deps.forge.runs.list, RECENT_RUNS))
    )

    @app.get(
        "/metrics",
        tags=["health"],
        summary="Prometheus text exposition.",
        response_class=PlainTextResponse,  # documented as text/plain, which it is
    )
    async def metrics() -> Response:
        if forge is not None:
            await forge.refresh()
        return Response(deps.metrics.render(), media_type="text/plain; version=0.0.4")


def _v1_router(deps: GatewayDeps) -> APIRouter:
    router = APIRouter(
        prefix="/api/v1",
        dependencies=[Depends(principal_dependency(deps.authenticator))],
        responses=ERROR_RESPONSES,  # every v1 operation documents the error body
    )
    if deps.limits is not None:  # after the caller is known: a bucket per key
        router.dependencies.append(Depends(key_limit(deps.limits)))

    @router.get("/whoami", tags=["identity"], summary="The caller's key, role and permissions.")
    async def whoami(request: Request) -> dict[str, Any]:
        principal: Principal = request.state.principal
        return {
            "key_id": principal.key_id,
            "name": principal.name,
            "role": str(principal.role),
            "permissions": sorted(permissions_of(principal.role)),
            # With grants, the permissions apply only where these say (none: everywhere).
            "grants": grants_as_dicts(principal.grants),
        }

    @router.get(
        "/platform/status",
        tags=["platform"],
        summary="Services, actor pools and replicas with their health.",
        dependencies=[Depends(permission("platform:read"))],
    )
    async def platform_status() -> dict[str, Any]:
        checks = await run_checks(deps.readiness)
        extra = await deps.platform_status() if deps.platform_status else {}
        return {"checks": checks, **extra}

    if deps.key_store is not None:
        router.include_router(
            keys_router(
                deps.key_store,
                deps.forget_key,
                deps.key_rotation_overlap,
                deps.grant_store,
            )
        )
    if deps.auth is not None:
        router.include_router(auth_router(deps.auth))
        router.include_router(users_router(deps.auth))
    if deps.grant_store is not None:
        router.include_router(grants_router(deps.grant_store, deps.forget_key))
    if deps.audit_store is not None:
        router.include_router(audit_router(deps.audit_store))
    if deps.pipelines is not None:
        router.include_router(pipelines_router(*deps.pipelines))
    if deps.lake is not None:
        spool = deps.spool_dir or Path(tempfile.gettempdir()) / "datapunk-uploads"
        router.include_router(lake_router(deps.lake, spool))
        router.include_router(sensitive_router(deps.lake))  # encryption at rest
    if deps.streams is not None:
        router.include_router(streams_router(deps.streams))
    if deps.models is not None:
        router.include_router(models_router(deps.models))
    if deps.forge is not None:
        router.include_router(forge_router(deps.forge))
    if deps.predict is not None:
        router.include_router(predict_router(deps.predict))
    # Always there: each field answers 503 when its area's backend is absent.
    router.include_router(graphql_router(deps, deps.graphql_limits))
    return router


def create_app(deps: GatewayDeps, *, echo_request_id: bool = True) -> FastAPI:
    """Build the gateway application from its dependencies.

    ``echo_request_id=False`` when a server in front (Serve's ingress) already echoes it.
    """
    app = FastAPI(
        title="Datapunk gateway",
        version=__version__,
        description="Lake, Stream, Forge and Cortex behind one authenticated API.",
    )
    _install_error_handlers(app)
    _health_routes(app, deps)
    if deps.auth is not None:
        # login and refresh take no credentials: they are how a person gets them.
        app.include_router(auth_public_router(deps.auth), prefix="/api/v1")
    app.include_router(_v1_router(deps))
    if deps.streams is not None:
        # WebSockets authenticate at connect themselves (see routes_streams).
        app.include_router(
            streams_socket_router(
                deps.streams, deps.authenticator, recheck_s=deps.socket_recheck_s
            ),
            prefix="/api/v1",
        )
    if deps.limits is not None:  # inside the audit and context middleware: 429s are seen
        install_limits(app, deps.limits)
    if deps.audit is not None:
        # Inside RequestContextMiddleware (added after it: outermost), so the request id
        # is bound and a 500 it writes is what gets audited.
        app.add_middleware(AuditMiddleware, queue=deps.audit)
        register_audit_metrics(deps.metrics.registry, deps.audit)
        app.router.on_shutdown.append(deps.audit.close)  # write what is queued
    app.add_middleware(
        RequestContextMiddleware, metrics=deps.metrics, echo_request_id=echo_request_id
    )
    install_openapi(app)  # last: it describes every route added above
    return app
