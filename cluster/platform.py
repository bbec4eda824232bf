"""``up``, ``down`` and ``status`` of the whole platform, for the CLI to present.

The order of ``up`` matters: every external adapter is checked (and the platform DB
migrated) before any Ray process starts, so a bad URL fails fast with one line and
leaves nothing behind to clean up.
"""

from __future__ import annotations

import asyncio
import logging
import os
import ssl
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import httpx

from cluster.db.engine import check_database
from cluster.db.migrate import upgrade
from cluster.errors import DatapunkError, PlatformStateError, ServiceUnavailableError
from cluster.health import check_configured_services
from cluster.logging import redact_data
from cluster.platform_state import PlatformState
from cluster.ray_exposure import check_job_api_protected
from cluster.ray_runtime import (
    head_addresses,
    port_open,
    ray_env,
    serve_env,
    start_head,
    stop_head,
    use_token_auth,
)
from cluster.security.keyring import check_key_files
from cluster.security.tls import client_verify, gateway_scheme, serve_tls_options
from cluster.settings import Settings

logger = logging.getLogger(__name__)
Step = Callable[[str], None]
GATEWAY_APP = "gateway"


def _no_step(_: str) -> None:
    return None


@dataclass
class UpResult:
    state: PlatformState
    already_running: bool
    db_revision: str | None = None
    urls: dict[str, str] = field(default_factory=dict)


def gateway_url(settings: Settings) -> str:
    return f"{gateway_scheme(settings)}://{settings.gateway.host}:{settings.gateway.port}"


def urls(settings: Settings, state: PlatformState) -> dict[str, str]:
    base = state.gateway_url
    return {
        "gateway": base,
        "API docs": f"{base}/docs",
        "readiness": f"{base}/readyz",
        "metrics": f"{base}/metrics",
        "Ray dashboard": state.dashboard_url,
        "actor metrics (Ray exporter)": (
            f"http://{settings.ray.node_ip_address}:{settings.ray.metrics_export_port}/metrics"
        ),
    }


def export_line(settings: Settings, state: PlatformState) -> str:
    """Shell line that lets Ray's own CLI (`ray status`, `ray job submit`) reach the cluster."""
    return (
        f"export RAY_ADDRESS={state.gcs_address} "
        f"RAY_API_SERVER_ADDRESS={state.dashboard_url} "
        f"RAY_AUTH_MODE=token RAY_AUTH_TOKEN_PATH={settings.ray_token_path}"
    )


def _use_ray_env(settings: Settings) -> None:
    """This process talks to our authenticated cluster and runs Serve as configured."""
    env = ray_env(settings)
    for key in ("RAY_USAGE_STATS_ENABLED", "PATH"):
        os.environ[key] = env[key]
    os.environ.update(serve_env(settings))
    use_token_auth(settings.ray_token_path)


def connect(settings: Settings, address: str) -> None:
    _use_ray_env(settings)
    import ray

    if ray.is_initialized():
        return
    ray.init(
        address=address,
        namespace=settings.ray.namespace,
        logging_level=logging.WARNING,
        log_to_driver=False,
        configure_logging=False,
    )


def disconnect() -> None:
    import ray

    if ray.is_initialized():
        ray.shutdown()


async def preflight(settings: Settings) -> str:
    """Check the platform DB and every configured service; migrate the DB. Return revision."""
    await check_database(settings)
    check_key_files(settings)  # master keys others can read: refuse to start
    statuses = await check_configured_services(settings)
    down = [s for s in statuses if not s.ok]
    if down:
        first = down[0]
        if first.error is not None:
            raise first.error
        raise ServiceUnavailableError(
            service=first.name, target=first.target, reason=first.detail, fix=_fix_for(first.name)
        )
    return await upgrade(settings)


def _fix_for(service: str) -> str:
    variable = {"redis": "REDIS", "rabbitmq": "AMQP", "consul": "CONSUL"}.get(
        service.lower(), service.upper()
    )
    return f"start it, or correct/unset DATAPUNK_{variable}_URL to use the embedded default"


def _running(state: PlatformState | None, settings: Settings) -> bool:
    if state is None:
        return False
    host, _, port = state.gcs_address.rpartition(":")
    return port_open(host, int(port)) and port_open(settings.gateway.host, settings.gateway.port)


def wait_ready(
    url: str, timeout_s: float = 90.0, verify: ssl.SSLContext | bool = True
) -> dict[str, Any]:
    """Poll ``/readyz`` until it answers 200; raise naming what is still down."""
    deadline = time.monotonic() + timeout_s
    last = "no answer"
    while time.monotonic() < deadline:
        try:
            reply = httpx.get(f"{url}/readyz", timeout=5, verify=verify)
            if reply.status_code == 200:
                body: dict[str, Any] = reply.json()
                return body
            last = reply.json().get("error", {}).get("message", reply.text[:200])
        except (httpx.HTTPError, ValueError) as exc:
            last = f"{type(exc).__name__}: {exc}"
        time.sleep(0.5)
    raise ServiceUnavailableError(
        service="gateway",
        target=url,
        reason=f"not ready after {timeout_s:g}s ({last})",
        fix="see `datapunk status` and the Ray dashboard's Serve logs",
    )


def deploy(settings: Settings) -> None:
    """Start Serve on the gateway port, the actor pools, Cortex, then the gateway."""
    from ray import serve

    from cluster.pools import start_pools
    from serve_apps import cortex
    from serve_apps.gateway import build

    # HTTPS when a certificate is configured (checked first: a bad one fails here, once).
    http_options = {"host": settings.gateway.host, "port": settings.gateway.port}
    serve.start(http_options={**http_options, **serve_tls_options(settings)})
    start_pools(settings)
    # Cortex has no route of its own: the gateway reaches it through a handle.
    serve.run(cortex.build(settings), name=cortex.CORTEX_APP, route_prefix=None, blocking=False)
    serve.run(build(settings), name=GATEWAY_APP, route_prefix="/", blocking=False)


async def resume_streams(settings: Settings) -> list[str]:
    """Redeploy every topology that was running when the platform went down.

    Each resumes from its newest checkpoint; with RabbitMQ, what was unacked then is
    delivered again and nothing is lost or doubled.
    """
    from actors.stream.control import StreamControl
    from actors.stream.topology import Topology

    control = StreamControl(settings)
    try:
        running = [r for r in await control.ls() if r["status"] == "running"]
        for record in running:
            await control.deploy(Topology.model_validate(record["spec"]))
        return [r["name"] for r in running]
    finally:
        await control.close()


def up(settings: Settings, step: Step = _no_step, address: str | None = None) -> UpResult:
    """Bring the platform up, or report that it already is. Idempotent."""
    step("checking services and migrating the platform DB")
    revision = asyncio.run(preflight(settings))
    state = PlatformState.load(settings.state_path)
    if _running(state, settings) and state is not None:
        return UpResult(state, already_running=True, db_revision=revision)
    if state is not None:
        step("cleaning up a platform that did not stop cleanly")
        _teardown(settings, state)
    address = address or settings.ray.address
    state = _new_state(settings, address)
    # Saved before `ray start`: an interrupted start still leaves the marker `down` needs.
    state.save(settings.state_path)
    try:
        if state.marker:
            step("starting the Ray head (token auth on)")
            start_head(settings, state.marker)
        else:
            step(f"joining Ray cluster at {address}")
        # Whatever the settings say, the running Job API must refuse callers without a token.
        check_job_api_protected(state.dashboard_url, wait_s=20.0 if state.marker else 2.0)
        step("connecting to Ray")
        connect(settings, state.gcs_address)
        step("deploying actor pools and the gateway on Serve")
        deploy(settings)
        step("waiting for the gateway to be ready")
        wait_ready(state.gateway_url, verify=client_verify(settings))
        if settings.consul_url is not None:  # register once ready: the HTTP check passes
            from cluster.consul import register_platform
            from cluster.pools import start_heartbeat

            register_platform(settings, state.gateway_url)
            start_heartbeat(settings)
        resumed = asyncio.run(resume_streams(settings))
        if resumed:
            step(f"resumed stream topologies from their checkpoints: {', '.join(resumed)}")
    except BaseException:
        _teardown(settings, state)
        raise
    finally:
        disconnect()
    return UpResult(state, already_running=False, db_revision=revision, urls=urls(settings, state))


def _new_state(settings: Settings, address: str | None) -> PlatformState:
    """What this `up` will run: a head of our own (with a marker) or a joined cluster."""
    addrs = head_addresses(settings)
    return PlatformState(
        gcs_address=address or addrs.gcs_address,
        dashboard_url=addrs.dashboard_url,
        gateway_url=gateway_url(settings),
        started_head=address is None,
        marker=None if address else uuid.uuid4().hex,
        started_at=time.time(),
    )


def _teardown(settings: Settings, state: PlatformState) -> int:
    """Remove what ``state`` says we started; return the number of processes stopped."""
    _deregister(settings)
    host, _, port = state.gcs_address.rpartition(":")
    if not state.started_head and port_open(host, int(port)):
        try:
            connect(settings, state.gcs_address)
            _remove_apps(settings, state)
        except (DatapunkError, ConnectionError, RuntimeError) as exc:
            logger.warning("could not shut Serve down cleanly", extra={"error": str(exc)})
        finally:
            disconnect()
    stopped = stop_head(state.marker) if state.started_head and state.marker else 0
    PlatformState.clear(settings.state_path)
    return stopped


def _deregister(settings: Settings) -> None:
    """Take our services out of Consul first, so nobody is routed to what stops next."""
    if settings.consul_url is None:
        return
    from cluster.consul import deregister_platform

    try:
        deregister_platform(settings)
    except DatapunkError as exc:  # Consul away: stopping the platform still goes on
        logger.warning("could not deregister from Consul", extra={"error": exc.message})


def _remove_apps(settings: Settings, state: PlatformState) -> None:
    from ray import serve

    from cluster.pools import stop_pools

    # On a head we started, every process (HAProxy included) ends with the head, and
    # serve.shutdown() can wait 30 s for the controller; on a shared cluster remove
    # only what is ours.
    if not state.started_head:
        from serve_apps.cortex import CORTEX_APP

        serve.delete(GATEWAY_APP)
        serve.delete(CORTEX_APP)
        stop_pools(settings)


def down(settings: Settings, step: Step = _no_step) -> int | None:
    """Stop what ``up`` started. Return processes stopped, or None when nothing ran."""
    state = PlatformState.load(settings.state_path)
    if state is None:
        return None
    step("stopping Serve, actor pools and the Ray head")
    return _teardown(settings, state)


def status(settings: Settings) -> dict[str, Any]:
    """Services, pools, replicas and health as one JSON-able report."""
    state = PlatformState.load(settings.state_path)
    if state is None:
        raise PlatformStateError("the platform is not running; start it with `datapunk up`")
    report: dict[str, Any] = {"state": state.__dict__, "urls": urls(settings, state)}
    try:
        reply = httpx.get(f"{state.gateway_url}/readyz", timeout=10, verify=client_verify(settings))
        report["ready"] = reply.status_code == 200
        report["checks"] = reply.json().get("checks", {})
    except httpx.HTTPError as exc:
        report["ready"] = False
        report["checks"] = {"gateway": f"unreachable: {exc}"}
    host, _, port = state.gcs_address.rpartition(":")
    if port_open(host, int(port)):
        connect(settings, state.gcs_address)
        try:
            from serve_apps.gateway.deployment import serve_summary

            report["serve"] = serve_summary()
        finally:
            disconnect()
    else:
        report["serve"] = {"error": f"Ray head at {state.gcs_address} is not answering"}
    # What a check reports may quote a URL with its password: `status` shows no secret.
    return dict(redact_data(report))
