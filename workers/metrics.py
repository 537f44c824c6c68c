"""The worker's Prometheus metrics (SPEC §7), served on ``settings.metrics_port`` (0 = off).

Per-batch numbers live here rather than in logs: pairs and distinct jobs per forward pass, padding,
scoring and media time, queue wait; plus each queue's length, read from Redis at scrape time.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator

from prometheus_client import CollectorRegistry, Counter, Histogram, start_http_server
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.registry import Collector

logger = logging.getLogger(__name__)

_COUNT_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512)
_TIME_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 300)


class QueueLengths(Collector):
    """``rerankq_queue_length{queue}``: jobs waiting in each priority queue (LLEN at scrape time)."""

    def __init__(self, redis_client, queues: list[str]) -> None:  # type: ignore[no-untyped-def]
        self.redis = redis_client
        self.queues = queues

    def collect(self) -> Iterator[GaugeMetricFamily]:
        family = GaugeMetricFamily("rerankq_queue_length", "Jobs waiting in the queue", labels=["queue"])
        try:
            pipe = self.redis.pipeline(transaction=False)
            for queue in self.queues:
                pipe.llen(queue)
            for queue, length in zip(self.queues, pipe.execute(), strict=True):
                family.add_metric([queue], float(length))
        except Exception as exc:  # a scrape must not break because Redis blinked
            logger.warning("queue length scrape failed: %s", exc)
        yield family


class PrefixSharing(Collector):
    """Shared-prefix scoring, from the scorer's own counters: prefix passes, prefix tokens computed, and
    prefix tokens saved (not recomputed by each of a job's other documents)."""

    def __init__(self, scorer) -> None:  # type: ignore[no-untyped-def]
        self.scorer = scorer

    def collect(self) -> Iterator[CounterMetricFamily]:
        stats = getattr(self.scorer, "sharing", None)
        for name, doc, field in (
                ("rerankq_prefix_passes", "Forward passes over a job's shared prefix", "prefix_passes"),
                ("rerankq_prefix_tokens_computed", "Shared-prefix tokens computed", "prefix_tokens_computed"),
                ("rerankq_prefix_tokens_saved", "Shared-prefix tokens not recomputed", "prefix_tokens_saved")):
            yield CounterMetricFamily(name, doc, value=float(getattr(stats, field, 0)))


class Metrics:
    """All worker metrics, on their own registry (several runtimes can live in one test process)."""

    def __init__(self) -> None:
        r = self.registry = CollectorRegistry()
        self.pairs_scored = Counter("rerankq_pairs_scored", "Pairs scored", registry=r)
        self.jobs = Counter("rerankq_jobs", "Jobs finished, by final state", ["state"], registry=r)
        self.batch_pairs = Histogram("rerankq_batch_pairs", "Pairs per forward pass", buckets=_COUNT_BUCKETS,
                                     registry=r)
        self.batch_jobs = Histogram("rerankq_batch_jobs", "Distinct jobs per forward pass",
                                    buckets=_COUNT_BUCKETS, registry=r)
        self.padding = Histogram("rerankq_batch_padding_ratio", "Share of padded tokens per forward pass",
                                 buckets=(0.01, 0.05, 0.1, 0.2, 0.3, 0.5, 0.7, 0.9, 1.0), registry=r)
        self.queue_wait = Histogram("rerankq_queue_wait_seconds", "Submit to start of work, per job",
                                    buckets=_TIME_BUCKETS, registry=r)
        self.scoring = Histogram("rerankq_scoring_seconds", "Seconds per forward pass", buckets=_TIME_BUCKETS,
                                 registry=r)
        self.job_latency = Histogram("rerankq_job_seconds", "Submit to result written, per job",
                                     buckets=_TIME_BUCKETS, registry=r)
        self.media = Histogram("rerankq_media_fetch_seconds", "Seconds fetching and decoding the media of a "
                               "group of jobs", buckets=_TIME_BUCKETS, registry=r)

    def watch_queues(self, redis_client, queues: list[str]) -> None:  # type: ignore[no-untyped-def]
        self.registry.register(QueueLengths(redis_client, queues))

    def watch_sharing(self, scorer) -> None:  # type: ignore[no-untyped-def]
        self.registry.register(PrefixSharing(scorer))

    def serve(self, port: int) -> None:
        """Serve ``/metrics`` on ``port`` in a daemon thread (0 = off)."""
        if port:
            start_http_server(port, registry=self.registry)
            logger.info("metrics on http://0.0.0.0:%d/metrics", port)
