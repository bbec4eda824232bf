"""Plain ASGI middleware that hands every mutating or denied call to the audit queue.

It sits inside ``RequestContextMiddleware`` (the request id is bound by then) and outside
the routes, so it sees what they decided: the caller (``request.state.principal``), the
permission its route demanded (``state.permission``), the objects checked
(``state.audit_targets``, else the path parameters), a hidden object's 404 marked as
denied (``state.audit_denied``) and the final status. The entry is queued after the
response has gone out (``cluster.security.audit`` explains why not before).

WebSockets are audited when refused: a close code 4401/4403/4404/4429 is status 401 ...
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator, Mapping
from datetime import UTC, datetime
from typing import Any

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.registry import Collector, CollectorRegistry
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from cluster.security.audit import AuditDraft, AuditQueue, outcome_of, should_audit
from serve_apps.gateway.access import AUDIT_DENIED, AUDIT_TARGETS
from serve_apps.gateway.middleware import route_template

_SOCKET_CLOSE_BASE = 4000


# A route declaring ``openapi_extra=READ_ONLY`` is a POST that changes nothing.
READ_ONLY_KEY = "x-datapunk-read-only"
READ_ONLY: dict[str, Any] = {READ_ONLY_KEY: True}


def _utcnow() -> datetime:
    return datetime.now(UTC)


def _target(scope: Scope, state: Mapping[str, Any]) -> str | None:
    targets = state.get(AUDIT_TARGETS)
    if targets:
        return ",".join(str(t) for t in targets)
    params = scope.get("path_params") or {}
    if not params:
        return None
    return ",".join(f"{name}={value}" for name, value in sorted(params.items()))


def audit_draft(scope: Scope, status: int, at: datetime) -> AuditDraft | None:
    """The entry for a finished call, or None when it is not audited."""
    state: Mapping[str, Any] = scope.get("state") or {}
    method = str(scope.get("method", "WS")) if scope["type"] == "http" else "WS"
    denied = bool(state.get(AUDIT_DENIED))
    extra = getattr(scope.get("route"), "openapi_extra", None) or {}
    if not should_audit(method, status, denied, read_only=bool(extra.get(READ_ONLY_KEY))):
        return None
    principal = state.get("principal")
    client = scope.get("client")
    return AuditDraft(
        at=at,
        method=method,
        route=route_template(scope),
        status=status,
        outcome=outcome_of(status, denied),
        request_id=state.get("request_id"),
        actor=getattr(principal, "key_id", None),
        actor_kind=getattr(principal, "kind", "key") if principal is not None else None,
        actor_name=getattr(principal, "name", None),
        role=None if principal is None else str(principal.role),
        permission=state.get("permission"),
        target=_target(scope, state),
        client=str(client[0]) if client else None,
    )


class AuditMiddleware:
    """Queues an ``AuditDraft`` for each audited call (see the module docstring)."""

    def __init__(
        self, app: ASGIApp, queue: AuditQueue, now: Callable[[], datetime] = _utcnow
    ) -> None:
        self.app = app
        self.queue = queue
        self.now = now

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] not in ("http", "websocket"):
            await self.app(scope, receive, send)
            return
        outcome = {"status": 500 if scope["type"] == "http" else 0}

        async def watch(message: Message) -> None:
            kind = message["type"]
            if kind in ("http.response.start", "websocket.http.response.start"):
                outcome["status"] = int(message["status"])
            elif kind == "websocket.close":
                code = int(message.get("code", 1000))
                if code >= _SOCKET_CLOSE_BASE + 400:
                    outcome["status"] = code - _SOCKET_CLOSE_BASE
            await send(message)

        try:
            await self.app(scope, receive, watch)
        finally:
            # Also after an exception (a 500): a failed mutation is still an attempt.
            draft = audit_draft(scope, outcome["status"], self.now())
            if draft is not None:
                await self.queue.submit(draft)


class AuditQueueCollector(Collector):
    """The queue's counters on the gateway's ``/metrics``."""

    def __init__(self, queue: AuditQueue) -> None:
        self.queue = queue

    def collect(self) -> Iterator[CounterMetricFamily | GaugeMetricFamily]:
        yield GaugeMetricFamily(
            "datapunk_audit_pending", "Audit entries queued, not yet written.", self.queue.pending
        )
        yield CounterMetricFamily(
            "datapunk_audit_written", "Audit entries written.", self.queue.written
        )
        yield CounterMetricFamily(
            "datapunk_audit_dropped",
            "Audit entries dropped because the queue stayed full (each one also logged).",
            self.queue.dropped,
        )
        yield CounterMetricFamily(
            "datapunk_audit_write_failures", "Failed batch writes (retried).", self.queue.failures
        )


def register_audit_metrics(registry: CollectorRegistry, queue: AuditQueue) -> None:
    """Expose ``queue``'s counters on ``registry`` (once: an app rebuilt on the same
    metrics keeps the first collector)."""
    with contextlib.suppress(ValueError):  # "Duplicated timeseries"
        registry.register(AuditQueueCollector(queue))
