"""The worker's Prometheus metrics (docs/DEPLOYMENT.md lists them), served on ``settings.metrics_port`` (0 = off).

Per-batch numbers live here rather than in logs: pairs and distinct jobs per forward pass, padding,
scoring and media time, queue wait; completion callbacks delivered, failed and dropped; plus each queue's and
the dead-letter list's length and the callback outbox's depth, read from Redis at scrape time. Every series
carries the ``model`` the worker serves (a fake scorer's reads ``fake:…``).
"""

from __future__ import annotations

import logging
from collections.abc import Iterator

import redis
from prometheus_client import CollectorRegistry, Counter, Histogram, start_http_server
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.registry import Collector

logger = logging.getLogger(__name__)

_COUNT_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512)
_TIME_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 300)


class ListLengths(Collector):
    """``rerankq_queue_length{queue}`` (jobs waiting in each priority queue) and ``rerankq_dlq_length``
    (entries in the dead-letter list): LLEN at scrape time."""

    def __init__(self, redis_client: redis.Redis, queues: list[str], dlq: str) -> None:
        self.redis = redis_client
        self.queues = queues
        self.dlq = dlq

    def collect(self) -> Iterator[GaugeMetricFamily]:
        queues = GaugeMetricFamily("rerankq_queue_length", "Jobs waiting in the queue", labels=["queue"])
        dlq = GaugeMetricFamily("rerankq_dlq_length", "Queue entries moved to the dead-letter list")
        try:
            pipe = self.redis.pipeline(transaction=False)
            for queue in [*self.queues, self.dlq]:
                pipe.llen(queue)
            *lengths, dead = pipe.execute()
            for queue, length in zip(self.queues, lengths, strict=True):
                queues.add_metric([queue], float(length))
            dlq.add_metric([], float(dead))
        except Exception as exc:  # a scrape must not break because Redis blinked
            logger.warning("queue length scrape failed: %s", exc)
        yield queues
        yield dlq


class PrefixSharing(Collector):
    """Shared-prefix scoring, from the model's own counters (``sharing``; none for a model that never
    shares): prefix passes, prefix tokens computed, prefix tokens saved (not recomputed per document)."""

    FAMILIES = (("rerankq_prefix_passes", "Forward passes over shared prefixes (several jobs' at once)",
                 "prefix_passes"),
                ("rerankq_prefixes_computed", "Shared prefixes computed (one per job that shares)",
                 "prefixes_computed"),
                ("rerankq_prefix_tokens_computed", "Shared-prefix tokens computed", "prefix_tokens_computed"),
                ("rerankq_prefix_tokens_saved", "Shared-prefix tokens not recomputed", "prefix_tokens_saved"))

    def __init__(self, model: object, name: str) -> None:
        self.model, self.name = model, name

    def collect(self) -> Iterator[CounterMetricFamily]:
        stats = getattr(self.model, "sharing", None)
        for family, doc, field in self.FAMILIES:
            counter = CounterMetricFamily(family, doc, labels=["model"])
            counter.add_metric([self.name], float(getattr(stats, field, 0)))
            yield counter


class OutboxDepth(Collector):
    """``rerankq_callback_outbox_depth``: callback events not yet delivered or dropped (ZCARD at scrape time)."""

    def __init__(self, redis_client: redis.Redis, due_key: str) -> None:
        self.redis, self.due_key = redis_client, due_key

    def collect(self) -> Iterator[GaugeMetricFamily]:
        depth = GaugeMetricFamily("rerankq_callback_outbox_depth", "Callback events waiting to be delivered")
        try:
            depth.add_metric([], float(self.redis.zcard(self.due_key)))
        except Exception as exc:  # a scrape must not break because Redis blinked
            logger.warning("callback outbox scrape failed: %s", exc)
        yield depth


class CallbackMetrics:
    """Completion callbacks delivered by this process (``rerankq.worker.callbacks``)."""

    def __init__(self, registry: CollectorRegistry, model: str) -> None:
        self.model = model
        self.delivered = Counter("rerankq_callbacks_delivered", "Callback events delivered (2xx)", ["model"],
                                 registry=registry).labels(model)
        self.failed = Counter("rerankq_callback_attempts_failed", "Callback attempts that failed (error status, "
                              "timeout, connection)", ["model"], registry=registry).labels(model)
        self._dropped = Counter("rerankq_callbacks_dropped", "Callback events given up on, by reason (refused, "
                                "attempts, age)", ["model", "reason"], registry=registry)

    def dropped(self, reason: str) -> None:
        self._dropped.labels(self.model, reason).inc()


class Metrics:
    """All worker metrics, on their own registry (several runtimes can live in one test process)."""

    def __init__(self, model: str = "unknown") -> None:
        r = self.registry = CollectorRegistry()
        self.model = model

        def counter(name: str, doc: str) -> Counter:
            return Counter(name, doc, ["model"], registry=r).labels(model)

        def histogram(name: str, doc: str, buckets: tuple[float, ...]) -> Histogram:
            return Histogram(name, doc, ["model"], buckets=buckets, registry=r).labels(model)

        self.pairs_scored = counter("rerankq_pairs_scored", "Pairs scored")
        self._jobs = Counter("rerankq_jobs", "Jobs ended by this worker, by final state", ["model", "state"],
                             registry=r)
        self.batch_pairs = histogram("rerankq_batch_pairs", "Pairs per forward pass", _COUNT_BUCKETS)
        self.batch_jobs = histogram("rerankq_batch_jobs", "Distinct jobs per forward pass", _COUNT_BUCKETS)
        self.padding = histogram("rerankq_batch_padding_ratio", "Share of padded tokens per forward pass",
                                 (0.01, 0.05, 0.1, 0.2, 0.3, 0.5, 0.7, 0.9, 1.0))
        self.queue_wait = histogram("rerankq_queue_wait_seconds", "Submit to start of work, per job", _TIME_BUCKETS)
        self.scoring = histogram("rerankq_scoring_seconds", "Seconds per forward pass", _TIME_BUCKETS)
        self.job_latency = histogram("rerankq_job_seconds", "Submit to result written, per job", _TIME_BUCKETS)
        self.media = histogram("rerankq_media_fetch_seconds", "Seconds fetching and decoding the media of a group "
                               "of jobs", _TIME_BUCKETS)
        self.retries = counter("rerankq_job_retries", "Jobs put back after a transient failure (media, S3, Redis)")
        self.leases_renewed = counter("rerankq_leases_renewed", "Held messages whose lease this worker renewed")
        self.messages_resent = counter("rerankq_messages_resent", "Messages lost on their way to a worker (a "
                                       "producer or worker died) and sent again by this worker's reaper")
        # the score cache (rerankq.worker.caching): a hit is a pair whose forward pass (and, looked up before its media,
        # fetch and decode) was saved; a miss a pair of a job using the cache that the model had to score
        self.cache_hits = counter("rerankq_cache_hits", "Pairs whose score came from the score cache")
        self.cache_misses = counter("rerankq_cache_misses", "Pairs of jobs using the score cache that were scored")
        self.cache_pairs_saved = counter("rerankq_cache_pairs_saved", "Pairs not run through the model thanks to "
                                         "the score cache")
        self.cache_errors = counter("rerankq_cache_errors", "Score cache calls that failed (the round went on "
                                    "without it)")
        self.callbacks = CallbackMetrics(r, model)

    def job_ended(self, state: str) -> None:
        self._jobs.labels(self.model, state).inc()

    def watch_queues(self, redis_client: redis.Redis, queues: list[str], dlq: str) -> None:
        self.registry.register(ListLengths(redis_client, queues, dlq))

    def watch_callbacks(self, redis_client: redis.Redis, due_key: str) -> None:
        self.registry.register(OutboxDepth(redis_client, due_key))

    def watch_sharing(self, model: object) -> None:
        self.registry.register(PrefixSharing(model, self.model))

    def serve(self, port: int) -> None:
        """Serve ``/metrics`` on ``port`` in a daemon thread (0 = off)."""
        if port:
            start_http_server(port, registry=self.registry)
            logger.info("metrics on http://0.0.0.0:%d/metrics", port)
