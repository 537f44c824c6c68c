"""The gateway's Prometheus metrics (``/metrics``): requests by route and status, latency, waiting calls."""

from __future__ import annotations

import re
from collections.abc import Iterator
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector

_TIME_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300, 600)
_ROUTES = (  # path pattern -> route label (bounded label values, whatever the ids)
    (re.compile(r"^/v1/jobs/[^/]+/events$"), "/v1/jobs/{id}/events"),
    (re.compile(r"^/v1/jobs/[^/]+/result$"), "/v1/jobs/{id}/result"),
    (re.compile(r"^/v1/jobs/[^/]+$"), "/v1/jobs/{id}"),
    (re.compile(r"^/static/.*$"), "/static"),
)
_KNOWN = {"/", "/healthz", "/readyz", "/metrics", "/docs", "/openapi.json", "/v1/rerank", "/v2/rerank", "/rerank",
          "/v1/models", "/v1/jobs", "/v1/media", "/v1/queue", "/v1/embeddings", "/v2/embed"}


def route_label(path: str) -> str:
    if path in _KNOWN:
        return path
    for pattern, label in _ROUTES:
        if pattern.match(path):
            return label
    return "other"


class _Waiting(Collector):
    def __init__(self, gateway: Any) -> None:
        self.gateway = gateway

    def collect(self) -> Iterator[GaugeMetricFamily]:
        family = GaugeMetricFamily("rerankq_gateway_waiting_calls", "Calls waiting for their job in this process")
        family.add_metric([], float(self.gateway.waiter.waiting))
        yield family


class GatewayMetrics:
    """Metrics of one gateway process, on their own registry."""

    def __init__(self, gateway: Any) -> None:
        r = self.registry = CollectorRegistry()
        self.requests = Counter("rerankq_gateway_requests", "HTTP requests by route, method and status",
                                ["route", "method", "status"], registry=r)
        self.latency = Histogram("rerankq_gateway_request_seconds", "HTTP request latency by route", ["route"],
                                 buckets=_TIME_BUCKETS, registry=r)
        r.register(_Waiting(gateway))

    def observe(self, path: str, method: str, status: int, seconds: float) -> None:
        route = route_label(path)
        self.requests.labels(route, method, str(status)).inc()
        self.latency.labels(route).observe(seconds)

    def render(self) -> bytes:
        return generate_latest(self.registry)
