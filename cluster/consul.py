"""Consul as the production service registry: registration, TTL heartbeats, resolution.

With ``consul_url`` set (``DATAPUNK_CONSUL_URL``), ``datapunk up`` registers the
gateway (an HTTP check on ``/readyz`` that the Consul agent runs) and every actor of
each pool (a TTL check that the pools' heartbeat keeps passing while the actor answers
its ping), and ``datapunk down`` deregisters them. PostgreSQL, Redis and RabbitMQ may
be named ``consul://[user:password@]SERVICE[/path][?scheme=...]``; ``resolve_service_urls``
turns each into the address of a health-passing instance when settings are loaded.

Plain code over py-consul's synchronous client: no Ray here (the heartbeat's Ray shell
lives in ``cluster.pools``), so all of it is tested against a fake agent.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import parse_qsl, urlencode, urlsplit

import consul
import requests
from pydantic import SecretStr

from cluster.errors import ConfigError, ServiceUnavailableError
from cluster.net_reasons import describe_network_error, first_line
from cluster.settings import Settings, redact_url

logger = logging.getLogger(__name__)

CONSUL_SCHEME = "consul"
SERVICE_PREFIX = "datapunk-"
GATEWAY_SERVICE = SERVICE_PREFIX + "gateway"
TAGS = ["datapunk"]
POOL_TTL_S = 30
HEARTBEAT_EVERY_S = POOL_TTL_S / 3  # three chances before the check turns critical
HTTP_INTERVAL = "10s"
HTTP_TIMEOUT = "5s"
# The scheme a consul:// URL resolves to, per setting (``?scheme=`` overrides it).
RESOLVED_SCHEMES: dict[str, str] = {
    "database_url": "postgresql+asyncpg",
    "redis_url": "redis",
    "amqp_url": "amqp",
}
_CLIENT_ERRORS = (requests.RequestException, consul.ConsulException, OSError)


@dataclass(frozen=True)
class Registration:
    """One service instance as the agent's ``/v1/agent/service/register`` takes it."""

    service_id: str
    name: str
    check: dict[str, Any]
    address: str | None = None
    port: int | None = None
    meta: dict[str, str] = field(default_factory=dict)

    @property
    def check_id(self) -> str:
        return str(self.check["CheckID"])


def pool_check_id(service: str, index: int) -> str:
    """The TTL check of one pool actor (``datapunk-lake-0:ttl``)."""
    return f"{SERVICE_PREFIX}{service}-{index}:ttl"


def gateway_registration(settings: Settings, gateway_url: str) -> Registration:
    """The gateway with an HTTP check on ``/readyz`` run by the Consul agent."""
    service_id = f"{GATEWAY_SERVICE}-{settings.gateway.port}"
    check = {
        "CheckID": f"{service_id}:readyz",
        "Name": "gateway /readyz",
        "HTTP": f"{gateway_url}/readyz",
        "Interval": HTTP_INTERVAL,
        "Timeout": HTTP_TIMEOUT,
    }
    return Registration(
        service_id=service_id,
        name=GATEWAY_SERVICE,
        check=check,
        address=settings.gateway.host,
        port=settings.gateway.port,
        meta={"url": gateway_url},
    )


def pool_registrations(settings: Settings) -> list[Registration]:
    """One instance per pool actor; its TTL check starts critical until a heartbeat."""
    found = []
    for service in ("lake", "stream", "cortex", "forge"):
        for index in range(getattr(settings.pools, service)):
            check = {
                "CheckID": pool_check_id(service, index),
                "Name": f"{service}-{index} answers ping",
                "TTL": f"{POOL_TTL_S}s",
            }
            found.append(
                Registration(
                    service_id=f"{SERVICE_PREFIX}{service}-{index}",
                    name=SERVICE_PREFIX + service,
                    check=check,
                    meta={"actor": f"{service}-{index}", "namespace": settings.ray.namespace},
                )
            )
    return found


def platform_registrations(settings: Settings, gateway_url: str) -> list[Registration]:
    """Everything ``datapunk up`` registers: the gateway, then each pool actor."""
    return [gateway_registration(settings, gateway_url), *pool_registrations(settings)]


class ConsulRegistry:
    """The few agent and health calls Datapunk makes, with errors that name the fix."""

    def __init__(self, url: str, *, timeout_s: float = 5.0) -> None:
        parts = urlsplit(url)
        scheme = parts.scheme or "http"
        self.target = redact_url(url)
        self._client = consul.Consul(
            host=parts.hostname or "127.0.0.1",
            port=parts.port or (443 if scheme == "https" else 8500),
            scheme=scheme,
            connections_timeout=timeout_s,
        )

    def _unavailable(self, exc: BaseException, doing: str) -> ServiceUnavailableError:
        reason = describe_network_error(exc) or first_line(exc)
        return ServiceUnavailableError(
            service="Consul",
            target=self.target,
            reason=f"{doing}: {reason}",
            fix="check that a Consul agent answers at DATAPUNK_CONSUL_URL, "
            "or unset it to use Ray's own registry",
        )

    def register(self, registration: Registration) -> None:
        """Register (or replace) one service instance and its check."""
        try:
            self._client.agent.service.register(
                registration.name,
                service_id=registration.service_id,
                address=registration.address,
                port=registration.port,
                tags=TAGS,
                meta=registration.meta,
                check=registration.check,
                replace_existing_checks=True,
            )
        except _CLIENT_ERRORS as exc:
            raise self._unavailable(exc, f"registering {registration.service_id}") from exc

    def deregister(self, service_id: str) -> bool:
        """Remove one instance; False when the agent did not know it (already gone)."""
        try:
            return bool(self._client.agent.service.deregister(service_id))
        except _CLIENT_ERRORS as exc:
            raise self._unavailable(exc, f"deregistering {service_id}") from exc

    def report(self, check_id: str, failure: str | None) -> bool:
        """Pass a TTL check (``failure`` None) or fail it with the reason as its note.

        False when the agent does not know the check (deregistered meanwhile).
        """
        checks = self._client.agent.check
        try:
            if failure is None:
                return bool(checks.ttl_pass(check_id, notes="ping ok"))
            return bool(checks.ttl_fail(check_id, notes=failure))
        except _CLIENT_ERRORS as exc:
            raise self._unavailable(exc, f"updating check {check_id}") from exc

    def passing_instances(self, service: str) -> list[tuple[str, int]]:
        """``(address, port)`` of each instance of ``service`` whose checks all pass."""
        try:
            _, entries = self._client.health.service(service, passing=True)
        except _CLIENT_ERRORS as exc:
            raise self._unavailable(exc, f"looking up service {service!r}") from exc
        # Consul's documented fallback: an empty service address means the node's.
        return [
            (e["Service"].get("Address") or e["Node"]["Address"], int(e["Service"]["Port"]))
            for e in entries or []
        ]


def register_platform(settings: Settings, gateway_url: str) -> list[str]:
    """Register the gateway and the pool actors; return the service ids registered."""
    url = settings.secret("consul_url")
    if url is None:
        return []
    registry = ConsulRegistry(url)
    registered = []
    for registration in platform_registrations(settings, gateway_url):
        registry.register(registration)
        registered.append(registration.service_id)
    logger.info("registered in Consul", extra={"services": ",".join(registered)})
    return registered


def deregister_platform(settings: Settings) -> list[str]:
    """Deregister what ``register_platform`` registered; return the ids that were there."""
    url = settings.secret("consul_url")
    if url is None:
        return []
    registry = ConsulRegistry(url)
    # Only service ids are needed, and the gateway URL is not part of them.
    ids = [r.service_id for r in platform_registrations(settings, "")]
    return [service_id for service_id in ids if registry.deregister(service_id)]


def heartbeat(registry: ConsulRegistry, failures: Mapping[str, str | None]) -> dict[str, bool]:
    """Report one round of pool pings: ``{check_id: None (answered) or the reason}``.

    Returns, per check, whether the agent knew it; a check it no longer knows (the
    platform was deregistered) is not an error, the caller simply stops reporting it.
    """
    return {check_id: registry.report(check_id, reason) for check_id, reason in failures.items()}


# --- consul://SERVICE URLs -------------------------------------------------------------


def resolve_url(registry: ConsulRegistry, setting: str, url: str) -> str:
    """``consul://[user:password@]SERVICE[/path][?scheme=..&..]`` as a concrete URL."""
    parts = urlsplit(url)
    service = parts.hostname
    if not service:
        raise ConfigError(
            key=setting,
            value=redact_url(url),
            allowed="consul://SERVICE names the Consul service, e.g. consul://postgres/datapunk",
        )
    query = dict(parse_qsl(parts.query, keep_blank_values=True))
    scheme = query.pop("scheme", RESOLVED_SCHEMES[setting])
    instances = registry.passing_instances(service)
    if not instances:
        raise ServiceUnavailableError(
            service=f"Consul service {service!r} ({setting})",
            target=registry.target,
            reason="no instance with all health checks passing",
            fix=f"start {service} and register it in Consul with a health check, "
            f"or give {setting} the service's own URL",
        )
    host, port = instances[0]  # Consul orders them; the first passing one is as good as any
    host = f"[{host}]" if ":" in host else host
    # Credentials travel exactly as written (still percent-encoded).
    userinfo, at, _ = parts.netloc.rpartition("@")
    userinfo += at
    tail = parts.path + (f"?{urlencode(query)}" if query else "")
    return f"{scheme}://{userinfo}{host}:{port}{tail}"


def resolve_service_urls(settings: Settings) -> Settings:
    """Settings whose ``consul://`` database, Redis and RabbitMQ URLs are resolved.

    Called once where settings are loaded (the composition root), so every adapter,
    and every Ray process the settings are exported to, sees a concrete URL.
    """
    wanted: dict[str, str] = {}
    for name in RESOLVED_SCHEMES:
        value: SecretStr | None = getattr(settings, name)
        if value is not None and value.get_secret_value().startswith(CONSUL_SCHEME + "://"):
            wanted[name] = value.get_secret_value()
    if not wanted:
        return settings
    consul_url = settings.secret("consul_url")
    if consul_url is None:
        name = next(iter(wanted))
        raise ConfigError(
            key=name,
            value=redact_url(wanted[name]),
            allowed="a consul:// URL needs DATAPUNK_CONSUL_URL (the Consul agent to ask); "
            "set it, or give the service's own URL",
        )
    registry = ConsulRegistry(consul_url)
    resolved = {name: SecretStr(resolve_url(registry, name, url)) for name, url in wanted.items()}
    return settings.model_copy(update=resolved)
