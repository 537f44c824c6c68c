"""``rerankq worker``: one Celery worker process pinned to one device and one model.

The model is loaded, and the runtime started, before the worker consumes anything. Several GPUs = several
processes, one per device (``rerankq worker --device cuda:0``, ``--device cuda:1``, ...) on the same Redis.
A worker that stops on an error exits non-zero, so restart policies keyed on failure restart it.
"""

from __future__ import annotations

import contextlib
import logging
import os
import socket
import threading
from collections.abc import Callable
from typing import Any

from media.sides import ResolvedSide
from reranker.contract import RerankModel
from reranker.loading import LoadOptions, load_model
from rerankq import keys
from rerankq.settings import Settings

logger = logging.getLogger(__name__)


def load(settings: Settings, spec: str, device: str) -> RerankModel[Any]:
    s = settings.scoring
    return load_model(spec, LoadOptions(device=device, dtype=s.dtype, attn_implementation=s.attn_implementation,
                                        cache_dir=s.model_cache_dir, s3_endpoint_url=settings.s3_endpoint_url,
                                        seed=s.seed, max_length=s.max_length))


def warm_up(model: RerankModel[Any], settings: Settings) -> None:
    """One forward pass before taking work, so the first job does not pay for lazy initialisation."""
    side = ResolvedSide(texts=["warm up"])
    model.forward([model.prepare(settings.instruction, side, side)])


def heartbeat(settings: Settings, name: str, model: str, device: str, scored: Callable[[], float],
              stop: threading.Event) -> None:
    """Keep this worker in the registry (``rerankq.registry``) and add its scored pairs to the deployment's
    throughput series, every ``registry.HEARTBEAT_S`` seconds, until ``stop`` is set."""
    import redis

    from rerankq import registry
    from rerankq.connections import redis_client

    client = redis_client(settings)
    reported = 0.0
    while True:
        total = scored()
        try:
            registry.register(client, settings, name, model, device, pairs_scored=int(total))
            registry.add_pairs(client, settings, int(total - reported))
            reported = total
        except redis.RedisError as exc:  # the next beat retries; the registry entry simply ages meanwhile
            logger.warning("worker registry heartbeat failed: %s", exc)
        if stop.wait(registry.HEARTBEAT_S):
            break
    with contextlib.suppress(redis.RedisError):
        registry.unregister(client, settings, name)
    client.close()


def run_worker(settings: Settings, model: str | None = None, device: str | None = None,
               hostname: str | None = None, loglevel: str = "INFO") -> int:
    """Load the model, start the runtime, leases and metrics, then consume until shut down (Ctrl-C /
    SIGTERM drain the jobs in hand). Returns the worker's exit code."""
    from rerankq.jobs import JobStore
    from workers import tasks
    from workers.app import make_app
    from workers.leases import LeaseKeeper
    from workers.metrics import Metrics
    from workers.runtime import Runtime

    device = device or settings.device
    hostname = hostname or f"rerankq-{device.replace(':', '')}-{os.getpid()}@{socket.gethostname()}"
    spec = model or settings.model
    scorer = load(settings, spec, device)
    warm_up(scorer, settings)
    logger.info("loaded %s on %s", scorer.name, scorer.device)
    metrics = Metrics(scorer.name)
    store = JobStore(settings)
    queues = keys.model_queue_names(settings, spec)  # the default queues, or this model's own
    metrics.watch_queues(store.redis, queues, keys.dlq_key(settings))
    metrics.serve(settings.metrics_port)
    runtime = Runtime(scorer, settings, hostname, metrics=metrics, store=store).start()
    leases = LeaseKeeper(settings, store.redis, metrics).start()
    tasks.install(runtime)
    app = make_app(settings, queues)
    worker = app.Worker(hostname=hostname, queues=queues, loglevel=loglevel,
                        without_mingle=True, without_gossip=True)
    stop = threading.Event()
    def scored() -> float:
        return metrics.registry.get_sample_value("rerankq_pairs_scored_total", {"model": scorer.name}) or 0.0

    beat = threading.Thread(target=heartbeat, args=(settings, hostname, spec, str(device), scored, stop),
                            name="rerankq-registry", daemon=True)
    beat.start()
    try:
        worker.start()
    finally:
        stop.set()
        leases.stop()
        runtime.stop()
        beat.join(5)
    code = int(getattr(worker, "exitcode", 0) or 0)
    if code:
        logger.error("worker stopped with exit code %d", code)
    return code
