"""``rerankq worker``: one Celery worker process pinned to one device and one model.

The model is loaded, and the runtime started, before the worker consumes anything. Several GPUs = several
processes, one per device (``rerankq worker --device cuda:0``, ``--device cuda:1``, ...) on the same Redis.
A worker that stops on an error exits non-zero, so restart policies keyed on failure restart it.
"""

from __future__ import annotations

import logging
import os
import socket
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
                                        seed=s.seed, max_length=s.max_length, share_prefix=s.share_prefix))


def warm_up(model: RerankModel[Any], settings: Settings) -> None:
    """One forward pass before taking work, so the first job does not pay for lazy initialisation."""
    side = ResolvedSide(texts=["warm up"])
    model.forward([model.prepare(settings.instruction, side, side)])


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
    scorer = load(settings, model or settings.model, device)
    warm_up(scorer, settings)
    logger.info("loaded %s on %s", scorer.name, scorer.device)
    metrics = Metrics(scorer.name)
    store = JobStore(settings)
    metrics.watch_queues(store.redis, keys.queue_names(settings), keys.dlq_key(settings))
    metrics.serve(settings.metrics_port)
    runtime = Runtime(scorer, settings, hostname, metrics=metrics, store=store).start()
    leases = LeaseKeeper(settings, store.redis, metrics).start()
    tasks.install(runtime)
    app = make_app(settings)
    worker = app.Worker(hostname=hostname, queues=keys.queue_names(settings), loglevel=loglevel,
                        without_mingle=True, without_gossip=True)
    try:
        worker.start()
    finally:
        leases.stop()
        runtime.stop()
    code = int(getattr(worker, "exitcode", 0) or 0)
    if code:
        logger.error("worker stopped with exit code %d", code)
    return code
