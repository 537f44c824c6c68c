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
import time
from collections.abc import Callable
from typing import Any

import redis

from rerankq import keys, registry
from rerankq.connections import redis_client
from rerankq.media.sides import ResolvedSide
from rerankq.models.contract import RerankModel, instruction_for
from rerankq.models.loading import LoadOptions, load_model
from rerankq.settings import Settings
from rerankq.worker.leases import run_beat

logger = logging.getLogger(__name__)


def load(settings: Settings, spec: str, device: str) -> RerankModel[Any]:
    s = settings.scoring
    return load_model(spec, LoadOptions(device=device, dtype=s.dtype, attn_implementation=s.attn_implementation,
                                        cache_dir=s.model_cache_dir, s3_endpoint_url=settings.s3_endpoint_url,
                                        seed=s.seed, max_length=s.max_length, share_prefix=s.share_prefix,
                                        quantization=settings.quantization,
                                        quantize_vision=settings.quantize_vision))


def warm_up(model: RerankModel[Any], settings: Settings) -> None:
    """One forward pass before taking work, so the first job does not pay for lazy initialisation."""
    side = ResolvedSide(texts=["warm up"])
    query = None if model.capabilities.task == "embed" else side  # an embedding model takes inputs alone
    model.forward([model.prepare(instruction_for(model, settings.instruction), query, side)])  # type: ignore[arg-type]


class RegistryBeat:
    """This worker's part of every lease beat (``rerankq.worker.leases``): its registry entry (model, device)
    refreshed, and the pairs it scored since the last beat added to the deployment's throughput series
    (``rerankq.registry``), in the beat's round trip: 2 commands, 3 when it scored, 4 on its first write to a
    throughput slot."""

    def __init__(self, settings: Settings, client: redis.Redis, name: str, model: str, device: str,
                 scored: Callable[[], float], quantization: str = "none", capabilities: str = "") -> None:
        self.settings, self.client, self.name, self.model, self.device = settings, client, name, model, device
        self.quantization, self.capabilities = quantization, capabilities  # the model's, as JSON
        self.scored = scored
        self.started_at = time.time()
        self.reported = 0.0
        self._slot_with_ttl: int | None = None  # the throughput slot this worker gave its expiry
        self._queued = (0, 0, False)  # pairs, slot, expiry queued: what the last ``add`` queued

    def __call__(self) -> None:
        run_beat(self.client, [self])

    def add(self, pipe: Any) -> int:
        total, now = self.scored(), time.time()
        fields = {"name": self.name, "model": self.model, "device": self.device, "quantization": self.quantization,
                  "capabilities": self.capabilities, "started_at": self.started_at, "pairs_scored": int(total)}
        count = registry.queue_presence(pipe, self.settings, self.name, fields)
        pairs, slot = int(total - self.reported), registry.slot_of(now)
        ttl = slot != self._slot_with_ttl
        self._queued = (pairs, slot, ttl)
        return count + (registry.queue_pairs(pipe, self.settings, pairs, now, ttl) if pairs > 0 else 0)

    def done(self, replies: list[Any]) -> None:
        pairs, slot, ttl = self._queued
        if pairs > 0 and not isinstance(replies[2], Exception):
            self.reported += pairs
            if ttl and replies[3] == 1:
                self._slot_with_ttl = slot
            elif not ttl and replies[2] == pairs:  # the slot was gone (a Redis restart): it needs its expiry
                registry.set_slot_ttl(self.client, self.settings, slot)
        for reply in replies:
            if isinstance(reply, Exception):
                raise reply

    def leave(self) -> None:
        with contextlib.suppress(redis.RedisError):
            registry.unregister(self.client, self.settings, self.name)


Control = Callable[[Any, Settings], None]  # registers the control queue's tasks on a worker app (batch runs)


def run_worker(settings: Settings, model: str | None = None, device: str | None = None,
               hostname: str | None = None, loglevel: str = "INFO", control: Control | None = None) -> int:
    """Load the model, start the runtime, leases and metrics, then consume until shut down (Ctrl-C /
    SIGTERM drain the jobs in hand). With ``control``, also run the control queue's tasks (batch runs,
    registered by the shell: workers know nothing of them). Returns the worker's exit code."""
    from rerankq.jobstore import JobStore
    from rerankq.worker.app import make_app
    from rerankq.worker.callbacks import Deliverer
    from rerankq.worker.leases import LeaseKeeper
    from rerankq.worker.metrics import Metrics
    from rerankq.worker.reaper import Reaper
    from rerankq.worker.runtime import Runtime

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

    def scored() -> float:
        return metrics.registry.get_sample_value("rerankq_pairs_scored_total", {"model": scorer.name}) or 0.0

    beat = RegistryBeat(settings, store.redis, hostname, spec, str(device), scored,
                        getattr(scorer, "quantization", "none"), scorer.capabilities.to_json())
    beat()  # listed before it consumes: the gateway's /v1/models sees it at once
    consumed = ([keys.control_queue(settings)] if control else []) + queues
    app = make_app(settings, consumed, runtime)
    if control:
        control(app, settings)

    def send(job: dict[str, Any], task_id: str, queue: str) -> None:
        # a job the SDK made (the reaper resends from the record only those): no Celery result, as the SDK's
        app.send_task(keys.TASK_NAME, args=[job], task_id=task_id, queue=queue, ignore_result=True,
                      headers={keys.RECORDED_HEADER: 1})

    reaper = Reaper(settings, store.redis, queues, metrics, send)
    leases = LeaseKeeper(settings, store.redis, metrics, parts=[beat, reaper], interval=registry.HEARTBEAT_S).start()
    metrics.watch_callbacks(store.redis, keys.callback_keys(settings)[0])
    deliverer = Deliverer(settings, store.redis, metrics.callbacks) if settings.callbacks.deliver else None
    if deliverer:
        deliverer.start()
    worker = app.Worker(hostname=hostname, queues=consumed, loglevel=loglevel,
                        without_mingle=True, without_gossip=True)
    try:
        worker.start()
    finally:
        if deliverer:
            deliverer.stop()
        leases.stop()
        runtime.stop()
        beat.leave()
    code = int(getattr(worker, "exitcode", 0) or 0)
    if code:
        logger.error("worker stopped with exit code %d", code)
    return code


def run_batcher(settings: Settings, control: Control, hostname: str | None = None, loglevel: str = "INFO") -> int:
    """A process that runs the control queue's tasks only (batch runs): no model, no runtime."""
    from rerankq.worker.app import make_app
    from rerankq.worker.leases import LeaseKeeper
    from rerankq.worker.metrics import Metrics

    hostname = hostname or f"rerankq-batcher-{os.getpid()}@{socket.gethostname()}"
    queue = keys.control_queue(settings)
    client = redis_client(settings)
    leases = LeaseKeeper(settings, client, Metrics("batcher")).start()  # long runs keep their messages
    app = make_app(settings, [queue])
    control(app, settings)
    worker = app.Worker(hostname=hostname, queues=[queue], loglevel=loglevel, without_mingle=True,
                        without_gossip=True)
    try:
        worker.start()
    finally:
        leases.stop()
    return int(getattr(worker, "exitcode", 0) or 0)
