"""Prometheus metrics: request counters and latency histograms from the API processes, queue and batch figures
read from the transport at scrape time (workers report through it, so any API process can show all of them).

With several API processes (`--processes N`), set PROMETHEUS_MULTIPROC_DIR (the CLI does) so every process's
counters are summed.
"""

from __future__ import annotations

import os
import time

from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily

from pictag.serve.transport.base import QueueHealth
from pictag.serve.worker import BATCH_BUCKETS

LATENCY_BUCKETS = (0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1, 2, 5, 10, 30)


class ApiMetrics:
    """The metrics one app instance records and serves."""

    def __init__(self):
        self.registry = CollectorRegistry()
        self.requests = Counter(
            "pictag_http_requests", "HTTP requests answered", ["endpoint", "status"], registry=self.registry
        )
        self.latency = Histogram(
            "pictag_http_latency_seconds",
            "Time from request to answer",
            ["endpoint"],
            buckets=LATENCY_BUCKETS,
            registry=self.registry,
        )
        self.errors = Counter("pictag_http_errors", "Error answers by reason", ["reason"], registry=self.registry)
        if os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
            from prometheus_client import multiprocess

            self._read = CollectorRegistry()
            multiprocess.MultiProcessCollector(self._read)
        else:
            self._read = self.registry

    def render(self, health: QueueHealth | None) -> bytes:
        """The exposition text: this app's metrics, then the queue's and the workers' (when reachable)."""
        text = generate_latest(self._read)
        if health is not None:
            text += generate_latest(_Families(queue_families(health)))
        return text


class RecordRequests:
    """ASGI middleware: count and time every HTTP answer by route and status.

    Plain ASGI rather than `@app.middleware("http")`, which runs every request in an extra task behind in-memory
    streams, CPU that the API process takes from the workers on a small machine.
    """

    def __init__(self, app, metrics: ApiMetrics):
        self.app = app
        self.metrics = metrics

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        started = time.perf_counter()
        status = 0

        async def send_and_note(message):
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        await self.app(scope, receive, send_and_note)
        # The router left the matched route in the scope it shares with its middleware.
        endpoint = getattr(scope.get("route"), "path", "other")
        self.metrics.requests.labels(endpoint, str(status)).inc()
        self.metrics.latency.labels(endpoint).observe(time.perf_counter() - started)


class _Families:
    def __init__(self, families):
        self._families = families

    def collect(self):
        return self._families


def queue_families(health: QueueHealth) -> list:
    """Gauges of the queue, and the workers' counters and batch-size histogram."""
    stats = health.worker_stats
    families = [
        GaugeMetricFamily("pictag_queue_depth", "Requests queued or being processed", value=health.depth),
        GaugeMetricFamily("pictag_live_workers", "Workers with a recent heartbeat", value=health.live_workers),
        GaugeMetricFamily("pictag_dead_letters", "Requests in the dead-letter stream", value=health.dead_letters),
        CounterMetricFamily("pictag_worker_requests", "Requests taken by workers", value=stats.get("requests", 0)),
        CounterMetricFamily("pictag_worker_batches", "Forward passes run by workers", value=stats.get("batches", 0)),
        CounterMetricFamily(
            "pictag_worker_predict_seconds",
            "Time workers spent in forward passes",
            value=stats.get("predict_seconds", 0),
        ),
        CounterMetricFamily(
            "pictag_worker_expired", "Requests dropped past their timeout", value=stats.get("expired", 0)
        ),
    ]
    errors = CounterMetricFamily("pictag_worker_errors", "Worker error answers by kind", labels=["kind"])
    for kind in ("decode", "request", "model"):
        errors.add_metric([kind], stats.get(f"errors_{kind}", 0))
    families.append(errors)
    cumulative, buckets = 0.0, []
    for bound in (*BATCH_BUCKETS, "inf"):
        cumulative += stats.get(f"batch_size_le_{bound}", 0)
        buckets.append(("+Inf" if bound == "inf" else str(bound), cumulative))
    families.append(
        HistogramMetricFamily(
            "pictag_batch_size", "Requests per forward pass", buckets=buckets, sum_value=stats.get("batch_size_sum", 0)
        )
    )
    return families
