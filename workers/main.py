"""``rerankq worker``: one Celery worker process pinned to one device and one model.

The model is loaded, and the runtime started, before the worker consumes anything. Several GPUs = several
processes, one per device (``rerankq worker --device cuda:0``, ``--device cuda:1``, ...) on the same Redis.
"""

from __future__ import annotations

import contextlib
import logging
import os
import socket
import threading
from typing import Any

from rerankq import keys
from rerankq.settings import Settings

logger = logging.getLogger(__name__)


def load(settings: Settings, spec: str, device: str):  # type: ignore[no-untyped-def]
    from reranker.loading import LoadOptions, load_scorer

    s = settings.scoring
    return load_scorer(spec, LoadOptions(device=device, dtype=s.dtype, attn_implementation=s.attn_implementation,
                                         cache_dir=s.model_cache_dir, s3_endpoint_url=settings.s3_endpoint_url,
                                         seed=s.seed))


def warm_up(scorer, settings: Settings) -> None:  # type: ignore[no-untyped-def]
    """One forward pass before taking work, so the first job does not pay for lazy initialisation."""
    from reranker.pipeline import PairPreparer, ResolvedSide

    pair = PairPreparer(scorer.tokenizer, settings.scoring.max_length).prepare(
        settings.instruction, ResolvedSide(texts=["warm up"]), ResolvedSide(texts=["warm up"]))
    scorer.forward([pair])


def heartbeat(settings: Settings, name: str, model: str, device: str, metrics: Any, stop: threading.Event) -> None:
    """Keep this worker in the registry (``rerankq.registry``) and add its scored pairs to the deployment's
    throughput series, every ``registry.HEARTBEAT_S`` seconds, until ``stop`` is set."""
    import redis

    from rerankq import registry

    client = redis.Redis.from_url(settings.redis_url)
    reported = 0.0
    while True:
        scored = metrics.registry.get_sample_value("rerankq_pairs_scored_total") or 0.0
        try:
            registry.register(client, settings, name, model, device, pairs_scored=int(scored))
            registry.add_pairs(client, settings, int(scored - reported))
            reported = scored
        except redis.RedisError as exc:  # the next beat retries; the registry entry simply ages meanwhile
            logger.warning("worker registry heartbeat failed: %s", exc)
        if stop.wait(registry.HEARTBEAT_S):
            break
    with contextlib.suppress(redis.RedisError):
        registry.unregister(client, settings, name)
    client.close()


def run_worker(settings: Settings, model: str | None = None, device: str | None = None,
               hostname: str | None = None, loglevel: str = "INFO") -> None:
    """Load the model, start the runtime and metrics, then consume until shut down (Ctrl-C / SIGTERM)."""
    import redis

    from workers import tasks
    from workers.app import make_app
    from workers.metrics import Metrics
    from workers.runtime import Runtime

    device = device or settings.device
    spec = model or settings.model
    hostname = hostname or f"rerankq-{device.replace(':', '')}-{os.getpid()}@{socket.gethostname()}"
    scorer = load(settings, spec, device)
    warm_up(scorer, settings)
    logger.info("loaded %s on %s (%s)", scorer.name, scorer.device, scorer.dtype)
    metrics = Metrics()
    metrics.watch_queues(redis.Redis.from_url(settings.redis_url), keys.queue_names(settings))
    metrics.serve(settings.metrics_port)
    runtime = Runtime(scorer, settings, hostname, metrics=metrics).start()
    tasks.install(runtime)
    queues = keys.worker_queue_names(settings, spec)
    app = make_app(settings, queues)
    worker = app.Worker(hostname=hostname, queues=queues, loglevel=loglevel,
                        without_mingle=True, without_gossip=True)
    stop = threading.Event()
    beat = threading.Thread(target=heartbeat, args=(settings, hostname, spec, str(device), metrics, stop),
                            name="rerankq-registry", daemon=True)
    beat.start()
    try:
        worker.start()
    finally:
        stop.set()
        runtime.stop()
        beat.join(5)
