"""The Ray Serve shell of the gateway: builds the app's dependencies inside a replica.

Everything Ray-specific about the gateway (actor lookups, Serve status) lives here;
``serve_apps.gateway.asgi`` stays a plain FastAPI factory.
"""

from __future__ import annotations

import asyncio
import time
from datetime import UTC, datetime, timedelta
from functools import partial
from typing import Any

from ray import serve
from sqlalchemy import text
from starlette.types import ASGIApp

from actors.forge.artifacts import ArtifactStore, artifacts_root
from actors.forge.promotion import holdout_evaluator
from actors.forge.registry import ModelRegistry
from actors.ingest.state import SqlIngestState
from actors.lake.client import RayLake
from actors.stream.control import StreamControl
from cluster.cache import build_cache
from cluster.db.engine import connect, create_engine, session_factory
from cluster.db.forge_store import ForgeRunStore, RegistryStore
from cluster.health import check_amqp
from cluster.logging import configure_logging, current_request_id
from cluster.pools import ping_pool, pool_sizes
from cluster.ray_runtime import head_addresses
from cluster.security.audit import AuditQueue
from cluster.security.audit_store import AuditStore
from cluster.security.auth_cache import CachedAuthenticator
from cluster.security.grant_store import GrantStore, copy_key_grants
from cluster.security.keys import KeyStore
from cluster.settings import Settings, settings_from_export
from serve_apps.cortex.client import ServeCortex
from serve_apps.gateway.asgi import Check, GatewayDeps, create_app
from serve_apps.gateway.identity import build_identity
from serve_apps.gateway.jobs_client import RayJobLauncher
from serve_apps.gateway.ratelimit import GatewayLimits
from serve_apps.gateway.routes_forge import ForgeBackend
from serve_apps.gateway.routes_models import ModelsBackend
from serve_apps.gateway.routes_predict import predict_backend

GATEWAY_APP = "gateway"
GATEWAY_DEPLOYMENT = "Gateway"


def _utcnow() -> datetime:
    return datetime.now(UTC)


def _name(value: Any) -> str:
    """Serve reports states as enums in some places and plain strings in others."""
    return str(getattr(value, "value", value))


def serve_summary() -> dict[str, Any]:
    """Applications, deployments and replica counts as Serve reports them."""
    status = serve.status()
    apps: dict[str, Any] = {}
    for app_name, app in status.applications.items():
        apps[app_name] = {
            "status": _name(app.status),
            "deployments": {
                name: {
                    "status": _name(dep.status),
                    "replicas": {_name(k): v for k, v in dep.replica_states.items()},
                }
                for name, dep in app.deployments.items()
            },
        }
    return {"applications": apps}


@serve.deployment(name=GATEWAY_DEPLOYMENT)
@serve.ingress()
class Gateway:
    """One gateway replica: DB-backed key authentication, readiness, metrics, routes."""

    def __init__(self, settings_values: dict[str, Any]) -> None:
        self.settings: Settings = settings_from_export(settings_values)
        configure_logging(self.settings.log_level, service="gateway")
        self.engine = create_engine(self.settings)
        # A rotated key's successor gets its scoped grants in the same transaction.
        store = KeyStore(session_factory(self.engine), now=_utcnow, on_rotate=(copy_key_grants,))
        self.authenticator = CachedAuthenticator(
            store,
            ttl_s=self.settings.gateway.auth_cache_ttl_s,
            now=time.monotonic,
            utcnow=_utcnow,
        )
        self.cache = build_cache(self.settings)
        # Bearer JWTs are users' access tokens; anything else goes to the key cache.
        bearer, auth_backend = build_identity(
            self.settings,
            session_factory(self.engine),
            self.cache,
            self.authenticator,
            utcnow=_utcnow,
            monotonic=time.monotonic,
        )
        self.deps = GatewayDeps(
            authenticator=bearer,
            auth=auth_backend,
            key_rotation_overlap=timedelta(seconds=self.settings.auth.rotation_overlap_s),
            readiness=self._readiness_checks(),
            platform_status=self._platform_status,
            key_store=store,
            forget_key=self.authenticator.invalidate,
            grant_store=GrantStore(session_factory(self.engine), _utcnow),
            audit=self._audit_queue(),
            audit_store=AuditStore(session_factory(self.engine), _utcnow),
            # Buckets in Redis when configured (shared by replicas), else per replica.
            limits=GatewayLimits.from_settings(self.settings),
            lake=RayLake(self.settings).as_service() if self.settings.pools.lake else None,
            spool_dir=self.settings.data_path / "uploads",
            pipelines=(
                self.settings.pipelines_dir,
                RayJobLauncher(head_addresses(self.settings).dashboard_url),
                SqlIngestState(session_factory(self.engine), _utcnow),
            ),
            # Connects lazily (platform DB on first call; Ray actors by name per call).
            streams=StreamControl(self.settings),
            models=ModelsBackend(
                ModelRegistry(
                    RegistryStore.from_engine(self.engine, _utcnow),
                    ArtifactStore(artifacts_root(self.settings)),
                ),
                holdout_evaluator(self.settings),
            ),
            forge=ForgeBackend(
                specs_dir=self.settings.data_path / "forge" / "specs",
                launcher=RayJobLauncher(head_addresses(self.settings).dashboard_url),
                runs=ForgeRunStore.from_engine(self.engine, _utcnow),
            ),
            # Routes from a cache of aliases and canaries (refreshed in the background);
            # Cortex's Serve handle is looked up on the first prediction.
            predict=predict_backend(
                ModelRegistry(
                    RegistryStore.from_engine(self.engine, _utcnow),
                    ArtifactStore(artifacts_root(self.settings)),
                ),
                ServeCortex(),
                refresh_s=self.settings.cortex.route_refresh_s,
            ),
        )

    def _audit_queue(self) -> AuditQueue | None:
        audit = self.settings.audit
        if not audit.enabled:
            return None
        return AuditQueue(
            AuditStore(session_factory(self.engine), _utcnow),
            max_pending=audit.queue_size,
            block_s=audit.block_s,
            batch_size=audit.batch_size,
        )

    def __serve_build_asgi_app__(self) -> ASGIApp:
        return create_app(self.deps, echo_request_id=False)

    def _readiness_checks(self) -> dict[str, Check]:
        checks: dict[str, Check] = {"database": self._check_database, "cache": self.cache.ping}
        amqp_url = self.settings.secret("amqp_url")
        if amqp_url:
            checks["rabbitmq"] = partial(check_amqp, amqp_url)
        for service, count in pool_sizes(self.settings).items():
            if count:
                checks[f"{service} pool"] = partial(self._check_pool, service)
        return checks

    async def _check_database(self) -> None:
        async with connect(self.engine, self.settings.platform_db_url()) as conn:
            await conn.execute(text("SELECT 1"))

    async def _check_pool(self, service: str) -> None:
        await ping_pool(self.settings, service, current_request_id())

    async def _platform_status(self) -> dict[str, Any]:
        pools = {}
        for service, count in pool_sizes(self.settings).items():
            replies = await ping_pool(self.settings, service, current_request_id()) if count else []
            pools[service] = {"size": count, "actors": replies}
        # serve.status() blocks on the controller; keep it off the replica's event loop.
        return {"pools": pools, "serve": await asyncio.to_thread(serve_summary)}
