"""Prometheus metrics of the gateway, on a registry of its own per app instance."""

from __future__ import annotations

from dataclasses import dataclass

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest

LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)


@dataclass
class GatewayMetrics:
    """Request count, latency histogram, errors and in-flight requests by route template."""

    registry: CollectorRegistry
    requests: Counter
    latency: Histogram
    errors: Counter
    in_flight: Gauge

    @classmethod
    def create(cls) -> GatewayMetrics:
        registry = CollectorRegistry()
        return cls(
            registry=registry,
            requests=Counter(
                "datapunk_gateway_requests",
                "HTTP requests by route template, method and status.",
                ["route", "method", "status"],
                registry=registry,
            ),
            latency=Histogram(
                "datapunk_gateway_request_duration_seconds",
                "Time from request start to response end, by route template.",
                ["route", "method"],
                buckets=LATENCY_BUCKETS,
                registry=registry,
            ),
            errors=Counter(
                "datapunk_gateway_errors",
                "Responses with an error status (4xx, 5xx), by route template and status.",
                ["route", "status"],
                registry=registry,
            ),
            in_flight=Gauge(
                "datapunk_gateway_in_flight_requests",
                "Requests being served now.",
                registry=registry,
            ),
        )

    def render(self) -> bytes:
        return generate_latest(self.registry)
