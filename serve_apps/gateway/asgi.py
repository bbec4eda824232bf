"""The gateway's FastAPI application, built from plain dependencies (no Ray in here).

``create_app`` is the only constructor: the Serve deployment, the uvicorn baseline of
the benchmark and the unit tests all build the same app, so what is measured and
tested is what is served.
"""

from __future__ import annotations

import asyncio
import tempfile
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from fastapi import APIRouter, Depends, FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response
from starlette.exceptions import HTTPException as StarletteHTTPException

from actors.ingest.state import IngestState
from actors.lake.service import LakeService
from cluster import __version__
from cluster.errors import DatapunkError
from cluster.security.keys import KeyStore
from cluster.security.principal import Authenticator, Principal
from cluster.security.rbac import permissions_of
from serve_apps.gateway.auth import permission, principal_dependency
from serve_apps.gateway.metrics import GatewayMetrics
from serve_apps.gateway.middleware import RequestContextMiddleware, error_body
from serve_apps.gateway.routes_forge import ForgeBackend, forge_router
from serve_apps.gateway.routes_keys import keys_router
from serve_apps.gateway.routes_lake import lake_router
from serve_apps.gateway.routes_models import ModelsBackend, models_router
from serve_apps.gateway.routes_pipelines import JobLauncher, pipelines_router
from serve_apps.gateway.routes_stream_sockets import streams_socket_router
from serve_apps.gateway.routes_streams import StreamOps, streams_router

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
    forget_key: Callable[[str], object] = lambda _key_id: None
    metrics: GatewayMetrics = field(default_factory=GatewayMetrics.create)


def _json_error(status: int, code: str, message: str, request: Request) -> Response:
    request_id = getattr(request.state, "request_id", None)
    return Response(
        error_body(code, message, request_id), status_code=status, media_type="application/json"
    )


def _install_error_handlers(app: FastAPI) -> None:
    @app.exception_handler(DatapunkError)
    async def _datapunk(request: Request, exc: DatapunkError) -> Response:
        return _json_error(exc.http_status, exc.code, exc.message, request)

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
    return dict(zip(checks, results, strict=True))


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

    @app.get("/metrics", tags=["health"], summary="Prometheus text exposition.")
    async def metrics() -> Response:
        return Response(deps.metrics.render(), media_type="text/plain; version=0.0.4")


def _v1_router(deps: GatewayDeps) -> APIRouter:
    router = APIRouter(
        prefix="/api/v1", dependencies=[Depends(principal_dependency(deps.authenticator))]
    )

    @router.get("/whoami", tags=["identity"], summary="The caller's key, role and permissions.")
    async def whoami(request: Request) -> dict[str, Any]:
        principal: Principal = request.state.principal
        return {
            "key_id": principal.key_id,
            "name": principal.name,
            "role": str(principal.role),
            "permissions": sorted(permissions_of(principal.role)),
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
        router.include_router(keys_router(deps.key_store, deps.forget_key))
    if deps.pipelines is not None:
        router.include_router(pipelines_router(*deps.pipelines))
    if deps.lake is not None:
        spool = deps.spool_dir or Path(tempfile.gettempdir()) / "datapunk-uploads"
        router.include_router(lake_router(deps.lake, spool))
    if deps.streams is not None:
        router.include_router(streams_router(deps.streams))
    if deps.models is not None:
        router.include_router(models_router(deps.models))
    if deps.forge is not None:
        router.include_router(forge_router(deps.forge))
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
    app.include_router(_v1_router(deps))
    if deps.streams is not None:
        # WebSockets authenticate at connect themselves (see routes_streams).
        app.include_router(
            streams_socket_router(deps.streams, deps.authenticator), prefix="/api/v1"
        )
    app.add_middleware(
        RequestContextMiddleware, metrics=deps.metrics, echo_request_id=echo_request_id
    )
    return app
