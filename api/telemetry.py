"""Prometheus metrics of chatq, served by the API at ``/metrics``.

Two sources, one exposition:

- HTTP requests by route template and status: counted in this process by an
  ASGI middleware (:class:`HttpMetrics`), in a registry of the app's own.
- Jobs, tokens, queue depth, running jobs, live workers and the job
  histograms: read from Redis at scrape time (:mod:`api.queues`) and exposed by
  :class:`QueueCollector`, so they agree across API processes and survive
  restarts. Workers run no metrics server.
"""

from __future__ import annotations

import time
from collections.abc import Iterator

from fastapi import FastAPI
from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest
from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
)
from prometheus_client.process_collector import ProcessCollector
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from api.queues import QueueView
from api.streams import StreamHub
from shared.opstats import BATCH_SIZE, CACHE_COUNTERS, HISTOGRAMS


class HttpMetrics:
    """ASGI middleware: requests by method, route template and status, and their latency.

    The label is the matched route's template (``/v1/jobs/{job_id}``), never the
    raw path, so job ids cannot blow up the label set; unmatched paths count
    as ``unmatched``.
    """

    def __init__(self, app: ASGIApp, registry: CollectorRegistry) -> None:
        self.app = app
        self.requests = Counter(
            "chatq_http_requests", "HTTP requests answered, by route template and status.",
            ["method", "route", "status"], registry=registry)
        self.latency = Histogram(
            "chatq_http_request_duration_seconds", "Time to answer an HTTP request.",
            ["method", "route"], registry=registry,
            buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60))

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        status = 500  # what the client gets if the app raises before answering
        started = time.perf_counter()

        async def send_status(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, send_status)
        finally:
            route = getattr(scope.get("route"), "path", None) or "unmatched"
            method = scope.get("method", "")
            self.requests.labels(method, route, str(status)).inc()
            self.latency.labels(method, route).observe(time.perf_counter() - started)


def install(app: FastAPI) -> None:
    """Count the app's HTTP requests; ``/metrics`` renders them with the queue metrics."""
    registry = CollectorRegistry()
    ProcessCollector(registry=registry)
    app.state.metrics_registry = registry
    app.add_middleware(HttpMetrics, registry=registry)


class QueueCollector:
    """Job and queue metrics from one reading of Redis (see :func:`api.queues.overview`)."""

    def __init__(self, views: list[QueueView], redis_up: bool = True,
                 batch_stats: dict[str, str] | None = None) -> None:
        self.views = views
        self.redis_up = redis_up
        self.batch_stats = batch_stats or {}  # the Batch API's counters (Keys.batch_stats)

    def collect(self) -> Iterator[Metric]:
        yield GaugeMetricFamily("chatq_redis_up", "1 when the API could read Redis.",
                                value=1 if self.redis_up else 0)
        yield from self._queue_gauges()
        yield from self._job_counters()
        yield from self._cache_metrics()
        yield from self._histograms()
        yield from self._batch_counters()

    def _batch_counters(self) -> Iterator[Metric]:
        batches = CounterMetricFamily("chatq_batches", "Batches that ended, by status.",
                                      labels=["status"])
        lines = CounterMetricFamily("chatq_batch_lines", "Batch lines written, by outcome "
                                    "(completed, failed, expired, cancelled).",
                                    labels=["outcome"])
        for name, value in sorted(self.batch_stats.items()):
            kind, _, label = name.partition(":")
            family = batches if kind == "batches" else lines if kind == "lines" else None
            if family is not None:
                family.add_metric([label], int(value))
        yield from (batches, lines)

    def _queue_gauges(self) -> Iterator[Metric]:
        labels = ["queue", "model"]
        depth = GaugeMetricFamily(
            "chatq_queue_depth", "Jobs waiting in the broker (all priority lists).", labels=labels)
        running = GaugeMetricFamily("chatq_jobs_running", "Jobs a worker is running now.",
                                    labels=labels)
        workers = GaugeMetricFamily("chatq_workers_live", "Workers with a fresh heartbeat.",
                                    labels=labels)
        slots = GaugeMetricFamily("chatq_slots", "Jobs the live workers can generate at once.",
                                  labels=labels)
        busy = GaugeMetricFamily("chatq_slots_busy", "Slots generating a job now (heartbeats).",
                                 labels=labels)
        for v in self.views:
            values = [v.queue, v.model or ""]
            depth.add_metric(values, v.depth)
            running.add_metric(values, v.running)
            workers.add_metric(values, len(v.workers))
            slots.add_metric(values, v.slots)
            busy.add_metric(values, v.slots_busy)
        yield from (depth, running, workers, slots, busy)

    def _job_counters(self) -> Iterator[Metric]:
        jobs = CounterMetricFamily("chatq_jobs", "Finished jobs, by model, queue and status.",
                                   labels=["model", "queue", "status"])
        generated = CounterMetricFamily(
            "chatq_tokens_generated", "Tokens generated by finished jobs.",
            labels=["model", "queue"])
        prompt = CounterMetricFamily("chatq_prompt_tokens", "Prompt tokens of finished jobs.",
                                     labels=["model", "queue"])
        for v in self.views:
            for (model, status), n in sorted(v.counters.jobs.items()):
                jobs.add_metric([model, v.queue, status], n)
            for model, n in sorted(v.counters.tokens.items()):
                generated.add_metric([model, v.queue], n)
            for model, n in sorted(v.counters.prompt_tokens.items()):
                prompt.add_metric([model, v.queue], n)
        yield from (jobs, generated, prompt)

    def _cache_metrics(self) -> Iterator[Metric]:
        """The workers' prompt caches: counters since start (by model) and what the live
        workers hold now (by queue)."""
        for name, text in CACHE_COUNTERS.items():
            family = CounterMetricFamily(f"chatq_prompt_cache_{name}", text,
                                         labels=["model", "queue"])
            for v in self.views:
                for (counter, model), n in sorted(v.counters.cache.items()):
                    if counter == name:
                        family.add_metric([model, v.queue], n)
            yield family
        labels = ["queue", "model"]
        held = GaugeMetricFamily("chatq_prompt_cache_bytes", "Host memory the live workers' "
                                 "prompt caches hold (saved sequences).", labels=labels)
        tokens = GaugeMetricFamily("chatq_prompt_cache_tokens", "Tokens the live workers' "
                                   "prompt caches hold (slots and host memory).", labels=labels)
        disk = GaugeMetricFamily("chatq_prompt_cache_disk_bytes", "Local disk the live "
                                 "workers' prompt caches use (saved sequences).", labels=labels)
        for v in self.views:
            held.add_metric([v.queue, v.model or ""], v.cache_sum("host_bytes"))
            tokens.add_metric([v.queue, v.model or ""], v.cache_sum("tokens"))
            disk.add_metric([v.queue, v.model or ""], v.cache_sum("disk_bytes"))
        yield from (held, tokens, disk)

    def _histograms(self) -> Iterator[Metric]:
        named = [(f"chatq_job_{spec.name}", spec) for spec in HISTOGRAMS]
        for metric, spec in [*named, (f"chatq_{BATCH_SIZE.name}", BATCH_SIZE)]:
            family = HistogramMetricFamily(metric, spec.help, labels=["model", "queue"])
            for v in self.views:
                for (name, model), hist in sorted(v.counters.histograms.items()):
                    if name == spec.name:
                        family.add_metric([model, v.queue], hist.cumulative(), hist.sum)
            yield family


class HubCollector:
    """This process's stream hub: what its pub/sub connection received and follows.
    Per process by design: with several API replicas each shows its own clients' share
    (:mod:`api.streams`)."""

    def __init__(self, hub: StreamHub) -> None:
        self.hub = hub

    def collect(self) -> Iterator[Metric]:
        stats = self.hub.stats
        yield CounterMetricFamily(
            "chatq_pubsub_messages", "Pub/sub messages (batches of job events) this API "
            "process received: only the jobs its clients follow.", value=stats.messages)
        yield CounterMetricFamily(
            "chatq_pubsub_subscribes", "Job channel subscriptions confirmed to this process.",
            value=stats.subscribes)
        yield CounterMetricFamily(
            "chatq_pubsub_reconnects", "Pub/sub connections this process made again after "
            "one broke (each resubscribes every channel still followed).",
            value=stats.reconnects)
        yield GaugeMetricFamily("chatq_pubsub_channels", "Job channels this process is "
                                "subscribed to now.", value=self.hub.channel_count)
        yield GaugeMetricFamily("chatq_stream_subscribers", "Local followers of job events "
                                "(streams, wait-mode requests) now.",
                                value=self.hub.subscriber_count)


def render(app: FastAPI, collector: QueueCollector, hub: StreamHub | None = None) -> bytes:
    """The exposition: this process's HTTP and pub/sub metrics, then the queue metrics."""
    scrape = CollectorRegistry()
    scrape.register(collector)
    if hub is not None:
        scrape.register(HubCollector(hub))
    registry: CollectorRegistry = app.state.metrics_registry
    return generate_latest(registry) + generate_latest(scrape)
