"""Prometheus metrics: one registry per app, so apps (and tests) do not share counters."""

from __future__ import annotations

import time
from typing import Any

from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    generate_latest,
)
from starlette.types import ASGIApp, Message, Receive, Scope, Send

LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60)


class Metrics:
    """Request counts and latencies per route, catalogue size, encoder time and batch size."""

    content_type = CONTENT_TYPE_LATEST

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        r = self.registry
        self.requests = Counter(
            "pricematch_requests_total",
            "HTTP requests by route template, method and status",
            ["route", "method", "status"],
            registry=r,
        )
        self.latency = Histogram(
            "pricematch_request_seconds",
            "HTTP request latency by route template",
            ["route", "method"],
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.catalogue_size = Gauge(
            "pricematch_catalogue_listings", "listings in the catalogue", registry=r
        )
        self.encoder_seconds = Histogram(
            "pricematch_encoder_seconds",
            "time of one encoder call (a batch) by modality",
            ["modality"],
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.encoder_batch = Histogram(
            "pricematch_encoder_batch_size",
            "items per micro-batched encoder call",
            ["modality"],
            buckets=(1, 2, 4, 8, 16, 32, 64, 128, 256),
            registry=r,
        )
        self.match_stage_seconds = Histogram(
            "pricematch_match_stage_seconds",
            "time of each stage of one /match: features (parse, decode, encode), each "
            "signal's search, fuse (the rest of the decision)",
            ["stage"],
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.wal_records = Gauge(
            "pricematch_wal_records", "write-ahead log records since the last snapshot", registry=r
        )
        self.wal_bytes = Gauge(
            "pricematch_wal_bytes", "write-ahead log bytes since the last snapshot", registry=r
        )
        self.compactions = Counter(
            "pricematch_compactions_total", "snapshots written from the log", registry=r
        )
        self.compaction_seconds = Gauge(
            "pricematch_last_compaction_seconds", "duration of the last compaction", registry=r
        )
        self.compaction_time = Gauge(
            "pricematch_last_compaction_timestamp_seconds",
            "when the last compaction finished (unix time)",
            registry=r,
        )
        self.batch_rows = Counter(
            "pricematch_batch_match_rows_total", "rows matched by /batch-match", registry=r
        )
        self.batch_running = Gauge(
            "pricematch_batch_jobs_running", "/batch-match jobs running now", registry=r
        )
        self.batch_cancelled = Counter(
            "pricematch_batch_jobs_cancelled_total",
            "/batch-match jobs stopped because the client went away or the server stopped",
            registry=r,
        )

    def render(self) -> bytes:
        return generate_latest(self.registry)


class MetricsMiddleware:
    """Counts and times every HTTP request under its route template (not the raw path)."""

    def __init__(self, app: ASGIApp, metrics: Metrics) -> None:
        self.app = app
        self.metrics = metrics

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        start = time.perf_counter()
        status = {"code": 500}

        async def send_(message: Message) -> None:
            if message["type"] == "http.response.start":
                status["code"] = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, send_)
        finally:
            route: Any = scope.get("route")
            name = getattr(route, "path", None) or "unmatched"
            method = scope.get("method", "")
            self.metrics.requests.labels(name, method, str(status["code"])).inc()
            self.metrics.latency.labels(name, method).observe(time.perf_counter() - start)
