"""The gateway with every backend it can have, as the security tests need it: real keys,
accounts, grants and audit reads on a SQLite platform DB, an in-process Lake, a real model
registry and run records, the stream and job stand-ins the route tests use; no Ray.

``full_gateway`` builds it through ``create_app`` exactly as the Serve deployment does
(the same ``GatewayDeps`` fields), so what the every-route and OWASP tests enumerate is
what is served.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import httpx
from fastapi import FastAPI

from actors.forge.artifacts import ArtifactStore, artifacts_root
from actors.forge.registry import ModelRegistry
from actors.ingest.state import SqlIngestState
from actors.lake.service import LakeService
from cluster.db.engine import create_engine, session_factory
from cluster.db.forge_store import ForgeRunStore, RegistryStore
from cluster.security.audit_store import AuditStore
from cluster.security.grant_store import GrantStore
from cluster.security.rbac import Role
from cluster.settings import Settings
from serve_apps.gateway.asgi import GatewayDeps, create_app
from serve_apps.gateway.routes_forge import ForgeBackend
from serve_apps.gateway.routes_models import ModelsBackend
from serve_apps.gateway.routes_predict import predict_backend
from tests.clock import FakeClock
from tests.unit.identity_support import Identity, identity, identity_settings
from tests.unit.test_gateway_forge import FakeLauncher
from tests.unit.test_gateway_predict import InProcessCortex
from tests.unit.test_gateway_streams import FakeStreams

PIPELINE = "orders_daily"
PIPELINE_YAML = """\
name: orders_daily
source: {type: file, path: /tmp/does-not-matter.csv, format: csv}
sink: {table: default.orders}
"""


@dataclass
class Scores:
    """The promotion gate's holdout evaluation: a fixed score per version."""

    by_version: dict[int, float] = field(default_factory=dict)

    async def __call__(
        self, record: dict[str, Any], table: str, snapshot_id: int | None, metric: str
    ) -> float:
        return self.by_version.get(record["version"], 0.0)


@dataclass
class FullGateway:
    """The app, its backends, and one API key per role."""

    app: FastAPI
    deps: GatewayDeps
    ident: Identity
    keys: dict[Role, str]
    key_ids: dict[Role, str]
    lake: LakeService
    streams: FakeStreams
    registry: ModelRegistry
    runs: ForgeRunStore
    grants: GrantStore
    scores: Scores
    clock: FakeClock
    settings: Settings
    rebuild: Callable[..., FastAPI]

    def client(self, app: FastAPI | None = None) -> httpx.AsyncClient:
        return httpx.AsyncClient(
            transport=httpx.ASGITransport(app=app or self.app), base_url="http://t"
        )

    def headers(self, role: Role) -> dict[str, str]:
        return {"X-API-Key": self.keys[role]}


@asynccontextmanager
async def full_gateway(
    data_dir: Path, settings: Settings | None = None, **overrides: Any
) -> AsyncIterator[FullGateway]:
    """Every backend on ``data_dir`` (the platform DB ``settings`` name: SQLite by
    default, PostgreSQL in integration tests); ``overrides`` replace ``GatewayDeps``
    fields."""
    settings = settings or identity_settings(data_dir)
    clock = FakeClock()
    pipelines = data_dir / "pipelines"
    pipelines.mkdir()
    (pipelines / f"{PIPELINE}.yaml").write_text(PIPELINE_YAML)
    async with identity(settings, clock) as ident:
        engine = create_engine(settings)
        sessions = session_factory(engine)
        registry = ModelRegistry(
            RegistryStore.from_engine(engine, clock.now),
            ArtifactStore(artifacts_root(settings)),
            clock.now,
        )
        created = {role: await ident.keys.create(role) for role in Role}
        runs = ForgeRunStore.from_engine(engine, clock.now)
        grants = GrantStore(sessions, clock.now)
        streams = FakeStreams()
        scores = Scores()
        lake = LakeService.from_settings(settings)
        predict = predict_backend(registry, InProcessCortex(registry), refresh_s=3600.0)
        deps = GatewayDeps(
            authenticator=ident.authenticator,
            readiness={},
            key_store=ident.keys,
            forget_key=ident.key_cache.invalidate,
            auth=ident.backend,
            grant_store=grants,
            audit_store=AuditStore(sessions, clock.now),
            lake=lake,
            spool_dir=data_dir / "spool",
            pipelines=(pipelines, FakeLauncher(), SqlIngestState(sessions, clock.now)),
            streams=streams,
            models=ModelsBackend(registry, scores),
            forge=ForgeBackend(
                specs_dir=data_dir / "forge" / "specs", launcher=FakeLauncher(), runs=runs
            ),
            predict=predict,
            socket_recheck_s=0.05,
        )
        deps = replace(deps, **overrides)

        def rebuild(**changes: Any) -> FastAPI:
            return create_app(replace(deps, **changes))

        try:
            yield FullGateway(
                app=create_app(deps),
                deps=deps,
                ident=ident,
                keys={role: token for role, (token, _) in created.items()},
                key_ids={role: record.id for role, (_, record) in created.items()},
                lake=lake,
                streams=streams,
                registry=registry,
                runs=runs,
                grants=grants,
                scores=scores,
                clock=clock,
                settings=settings,
                rebuild=rebuild,
            )
        finally:
            await predict.routes.close()
            await engine.dispose()
