"""Is each external service the platform depends on reachable? One line per answer.

Each ``check_*`` returns None or raises ``ServiceUnavailableError`` whose message
names the (redacted) URL, a short reason and the fix. ``check_configured_services``
runs the checks the settings call for, concurrently, and returns a row per service
for ``datapunk status`` / ``datapunk doctor`` style tables.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass, field
from typing import Literal, NamedTuple
from urllib.parse import unquote, urlsplit

import aio_pika
import aiormq.exceptions
import consul
import requests
from aio_pika.connection import make_url

from cluster.cache.redis import RedisCache
from cluster.errors import DatapunkError, ServiceUnavailableError
from cluster.net_reasons import (
    CONNECTION_REFUSED,
    HOST_NOT_FOUND,
    TIMED_OUT,
    describe_network_error,
    first_line,
)
from cluster.settings import Settings, redact_url

Mode = Literal["embedded", "external"]
_UrlName = Literal["redis_url", "amqp_url", "consul_url"]
DEFAULT_TIMEOUT_S = 5.0

BAD_CREDENTIALS = "ACCESS_REFUSED: bad credentials (user name or password)"


@dataclass(frozen=True, slots=True)
class ServiceStatus:
    """One row of a health report; ``target`` never contains a password."""

    name: str
    mode: Mode
    target: str
    ok: bool
    detail: str
    # The typed error behind a failed row, for callers that must stop on it (preflight).
    error: DatapunkError | None = field(default=None, compare=False, repr=False)


class ServiceCheck(NamedTuple):
    """An extra check for ``check_configured_services`` (the platform DB, for one).

    A plain ``(name, target, awaitable)`` tuple is accepted too; ``mode`` then
    defaults to external. ``target`` must already be redacted.
    """

    name: str
    target: str
    check: Awaitable[None]
    mode: Mode = "external"


async def check_redis(url: str, *, timeout_s: float = DEFAULT_TIMEOUT_S) -> None:
    """PING Redis at ``url`` on a short-lived pool."""
    cache = RedisCache(url, timeout_s=timeout_s, max_connections=1)
    try:
        await cache.ping()
    finally:
        await cache.close()


async def check_amqp(url: str, *, timeout_s: float = DEFAULT_TIMEOUT_S) -> None:
    """Open and close one AMQP connection to ``url`` (RabbitMQ)."""
    # Built by hand rather than with aio_pika.connect() so a failed attempt is closed
    # here too; otherwise its __del__ schedules a close that nobody awaits.
    connection = aio_pika.Connection(make_url(url))
    try:
        # wait_for as well as aio-pika's own timeout: the latter covers the TCP
        # connect, the former also a broker that accepts and then never answers.
        await asyncio.wait_for(connection.connect(timeout=timeout_s), timeout=timeout_s + 1)
    except (aiormq.exceptions.AMQPError, OSError, TimeoutError) as exc:
        reason, fix = _amqp_reason(exc, url)
        raise ServiceUnavailableError(
            service="RabbitMQ", target=redact_url(url), reason=reason, fix=fix
        ) from exc
    finally:
        # The answer is already known; a failing close must not change it.
        with contextlib.suppress(aiormq.exceptions.AMQPError, OSError):
            await connection.close()


async def check_consul(url: str, *, timeout_s: float = DEFAULT_TIMEOUT_S) -> None:
    """Ask the Consul agent at ``url`` about itself (``GET /v1/agent/self``)."""
    parts = urlsplit(url)
    scheme = parts.scheme or "http"
    host = parts.hostname or "127.0.0.1"
    port = parts.port or (443 if scheme == "https" else 8500)

    def _ask() -> None:
        # py-consul's client is synchronous (requests); a thread keeps the loop free.
        client = consul.Consul(host=host, port=port, scheme=scheme, connections_timeout=timeout_s)
        client.agent.self()

    try:
        await asyncio.to_thread(_ask)
    except (requests.RequestException, consul.ConsulException, OSError) as exc:
        reason, fix = _consul_reason(exc)
        raise ServiceUnavailableError(
            service="Consul", target=redact_url(url), reason=reason, fix=fix
        ) from exc


async def check_configured_services(
    settings: Settings,
    extra_checks: Iterable[ServiceCheck | tuple[str, str, Awaitable[None]]] = (),
    *,
    timeout_s: float = 10.0,
) -> list[ServiceStatus]:
    """Check every service the settings name, concurrently; never raises for a failure.

    Rows come in a fixed order: ``extra_checks`` first (the lead's hook for the
    platform database), then redis, rabbitmq, consul. An unset URL is the embedded
    default and reports ok without a network call. Each check is cut off after
    ``timeout_s``.
    """
    rows: list[ServiceStatus | ServiceCheck] = [ServiceCheck(*item) for item in extra_checks]
    # Built per call (not at import) so the check functions are looked up when used.
    configured: list[tuple[str, _UrlName, Callable[[str], Awaitable[None]], str]] = [
        ("redis", "redis_url", check_redis, "in-process cache"),
        ("rabbitmq", "amqp_url", check_amqp, "in-cluster queue"),
        ("consul", "consul_url", check_consul, "Ray registry"),
    ]
    for name, key, check, embedded_target in configured:
        url = settings.secret(key)
        if url is None:
            rows.append(ServiceStatus(name, "embedded", embedded_target, True, "embedded default"))
        else:
            rows.append(ServiceCheck(name, redact_url(url), check(url)))
    pending = [row for row in rows if isinstance(row, ServiceCheck)]
    results = iter(await asyncio.gather(*(_run(check, timeout_s) for check in pending)))
    return [next(results) if isinstance(row, ServiceCheck) else row for row in rows]


async def _run(check: ServiceCheck, timeout_s: float) -> ServiceStatus:
    """One check as a status row: a health report must report, not crash."""
    try:
        await asyncio.wait_for(check.check, timeout=timeout_s)
    except TimeoutError:
        detail = f"{check.name} at {check.target} did not answer within {timeout_s:g} s"
        return ServiceStatus(check.name, check.mode, check.target, False, detail)
    except DatapunkError as exc:
        return ServiceStatus(check.name, check.mode, check.target, False, exc.message, exc)
    except Exception as exc:  # a bug in a check still yields a row, named by its type
        detail = f"check failed: {type(exc).__name__}: {first_line(exc)}"
        return ServiceStatus(check.name, check.mode, check.target, False, detail)
    return ServiceStatus(check.name, check.mode, check.target, True, "reachable")


def _amqp_reason(exc: BaseException, url: str) -> tuple[str, str]:
    auth_errors = (
        aiormq.exceptions.AuthenticationError,
        aiormq.exceptions.ProbableAuthenticationError,
    )
    if isinstance(exc, auth_errors):
        return BAD_CREDENTIALS, (
            "put the right user and password in DATAPUNK_AMQP_URL "
            "(amqp://user:password@host:5672/vhost)"
        )
    if _is_vhost_refusal(exc):
        vhost = unquote(urlsplit(url).path[1:]) or "/"
        return (
            f"NOT_ALLOWED: vhost {vhost!r} not found or not open to this user",
            f"create it (rabbitmqctl add_vhost {vhost}) and grant the user access "
            f"(rabbitmqctl set_permissions -p {vhost} USER '.*' '.*' '.*'), "
            "or fix the vhost at the end of DATAPUNK_AMQP_URL",
        )
    reason = describe_network_error(exc) or first_line(exc)
    fixes = {
        CONNECTION_REFUSED: "start RabbitMQ there, "
        "or unset DATAPUNK_AMQP_URL to use the in-cluster queue",
        TIMED_OUT: "check host, port and firewall in DATAPUNK_AMQP_URL; the broker did not answer",
        HOST_NOT_FOUND: "correct the host name in DATAPUNK_AMQP_URL",
    }
    return reason, fixes.get(reason, "check that RabbitMQ runs where DATAPUNK_AMQP_URL points")


def _is_vhost_refusal(exc: BaseException) -> bool:
    # RabbitMQ answers Connection.Open for an unknown (or forbidden) vhost with
    # Connection.Close NOT_ALLOWED; aiormq surfaces that either as
    # ConnectionNotAllowed or, during the handshake, as an InvalidFrameError whose
    # text mentions the Close frame (the reply text itself is not kept).
    if isinstance(exc, aiormq.exceptions.ConnectionNotAllowed):
        return True
    return isinstance(exc, aiormq.exceptions.InvalidFrameError) and "Connection.Close" in str(exc)


def _consul_reason(exc: BaseException) -> tuple[str, str]:
    if isinstance(exc, consul.ACLPermissionDenied):
        return "ACL token lacks agent:read", "set CONSUL_HTTP_TOKEN to a token with agent:read"
    if isinstance(exc, requests.Timeout):
        return TIMED_OUT, "check host, port and firewall in DATAPUNK_CONSUL_URL"
    reason = describe_network_error(exc) or first_line(exc)
    fixes = {
        CONNECTION_REFUSED: "start a Consul agent there (consul agent -dev for a laptop), "
        "or unset DATAPUNK_CONSUL_URL to use Ray's own registry",
        TIMED_OUT: "check host, port and firewall in DATAPUNK_CONSUL_URL",
        HOST_NOT_FOUND: "correct the host name in DATAPUNK_CONSUL_URL",
    }
    return reason, fixes.get(reason, "check that a Consul agent answers at DATAPUNK_CONSUL_URL")
