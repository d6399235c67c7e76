"""Prometheus metrics of one app instance (own registry, so several apps can live in one process)."""

from __future__ import annotations

import time
from collections.abc import Mapping

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from service.snapshot import IndexSnapshot

_STAGE_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0)


class Metrics:
    """Request counts by route and status, per-stage latency, batch sizes, index size, build id."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        self.requests = Counter(
            "cvm_http_requests",
            "HTTP requests by route template, method and status",
            ("route", "method", "status"),
            registry=self.registry,
        )
        self.request_seconds = Histogram(
            "cvm_http_request_duration_seconds",
            "HTTP request latency by route template",
            ("route",),
            buckets=_STAGE_BUCKETS,
            registry=self.registry,
        )
        self.stage_seconds = Histogram(
            "cvm_localize_stage_seconds",
            "Time spent in each /localize stage",
            ("stage",),
            buckets=_STAGE_BUCKETS,
            registry=self.registry,
        )
        self.batch_size = Histogram(
            "cvm_batch_size",
            "Images per forward pass",
            buckets=(1, 2, 4, 8, 16, 32, 64),
            registry=self.registry,
        )
        self.index_ntotal = Gauge("cvm_index_ntotal", "Vectors in the served index", registry=self.registry)
        self.active_build = Gauge("cvm_active_build_id", "Id of the served build", registry=self.registry)
        self.swaps = Counter("cvm_index_swaps", "Builds loaded since start", registry=self.registry)

    def observe_localize(self, timings_ms: Mapping[str, float], batch_size: int) -> None:
        """Record one /localize request's stage times (ms) and its batch size."""
        for stage, ms in timings_ms.items():
            self.stage_seconds.labels(stage).observe(ms / 1000.0)
        self.batch_size.observe(batch_size)

    def observe_snapshot(self, snapshot: IndexSnapshot) -> None:
        """A build was loaded: update its gauges."""
        self.index_ntotal.set(snapshot.ntotal)
        self.active_build.set(snapshot.build_id)
        self.swaps.inc()

    def render(self) -> bytes:
        """The Prometheus text exposition."""
        return generate_latest(self.registry)


class RequestMetricsMiddleware:
    """Counts every HTTP request by route template (not raw path, to bound label cardinality)."""

    def __init__(self, app: ASGIApp, metrics: Metrics) -> None:
        self.app = app
        self.metrics = metrics

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        status = 500  # if the app dies before answering, the server answers 500
        started = time.perf_counter()

        async def send_wrapper(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = int(message["status"])
            await send(message)

        try:
            await self.app(scope, receive, send_wrapper)
        finally:
            route = scope.get("route")
            name = getattr(route, "path", None) or "unmatched"
            self.metrics.requests.labels(name, scope["method"], str(status)).inc()
            self.metrics.request_seconds.labels(name).observe(time.perf_counter() - started)
