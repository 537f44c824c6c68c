"""Every Redis key, queue and task name rerankq uses, in one place, all under ``settings.queue_prefix`` (Celery's
configuration, which uses these names, is ``rerankq.celeryconf``).

Several deployments can share one Redis by choosing different prefixes. Celery's own keys (its queues'
lists, ``unacked``, event fan-out) live under the same queue names; our job records live beside them.

| name | type | what |
|---|---|---|
| ``{prefix}.high`` / ``.normal`` / ``.low`` | list (Celery queue) | jobs for the default model, per priority |
| ``{prefix}.m.{slug}.high`` / ... | list (Celery queue) | jobs naming another model (``model_queue_names``) |
| ``{prefix}:worker:{name}`` | hash, TTL | a live worker: model, device, heartbeat (``rerankq.registry``) |
| ``{prefix}:stats:pairs:{t}`` | int, TTL | pairs scored in a 10 s slot, all workers (``rerankq.registry``) |
| ``{prefix}:gateway:recent`` | list | the last job ids submitted through the HTTP gateway |
| ``{prefix}:job:{id}`` | hash | the job record (``rerankq.jobs``) |
| ``{prefix}:job:{id}:done`` | list | one token once the job is terminal, if a waiter marked it ``watched`` |
| ``{prefix}:notify:{client}`` | list, TTL | ``STATE RECORD-KEY`` and the outcome of each ended job it names |
| ``{prefix}.control`` | list (Celery queue) | batch runs (``rerankq.batch`` tasks): workers and batchers consume it |
| ``{prefix}:batch:{id}`` | hash | a batch record (``rerankq.batches``) |
| ``{prefix}:batch:{id}:{part}`` | various | a batch runner's keys: lines written, error lines, custom ids, lock |
| ``{prefix}:batches`` | zset | batch ids by creation time (``rerankq batch list``) |
| ``{prefix}:cancels`` | int | how many jobs were ever cancelled: workers look for cancelled jobs only when it moved |
| ``{prefix}:dlq`` | list | queue entries that were not rerank messages (``rerankq dlq list``) |
| ``rerankq:score:{digest}`` | string, TTL | a cached score, in the score cache's own Redis |
| ``{prefix}:callbacks:due`` | zset | callback events by due time; claiming pushes it forward (``rerankq.callbacks``) |
| ``{prefix}:callbacks:events`` | hash | event id → the event; ``{id}#n`` its attempts, ``{id}#err`` its last error |
| ``{prefix}:callbacks:dropped`` | list | the last 1000 events given up on, with their last error |
| ``unacked`` / ``unacked_index`` | hash / zset | Celery's messages held by workers, by lease expiry (kombu) |
| ``{queue}:pending`` | zset | task ids sent to a queue and not yet taken by a worker (``rerankq.worker.reaper``) |
| ``{queue}:pending:msg`` | hash | task id → message, for messages put back in a queue (``rerankq.worker.reaper``) |
| ``celery-task-meta-{task id}`` | string | Celery's result of a plain Celery producer's message (``AsyncResult``) |
"""

from __future__ import annotations

import hashlib
import re
from typing import Any

from rerankq.settings import Settings

TASK_NAME = "rerankq.rerank"
BATCH_TASK_NAME = "rerankq.batch"
UNACKED_INDEX = "unacked_index"  # kombu's index of held messages by lease start (its default name)
PRIORITIES = ("high", "normal", "low")  # the order workers drain them in
# A message header the SDK (and a worker's reaper) sets on a job whose record it created before publishing: the
# worker does not look for the record again (a message without it, from any other producer, gets one made).
RECORDED_HEADER = "rerankq_recorded"


def queue_name(settings: Settings, priority: str) -> str:
    """The Celery queue of a priority (``high`` | ``normal`` | ``low``)."""
    if priority not in PRIORITIES:
        raise ValueError(f"priority must be one of {', '.join(PRIORITIES)}, got {priority!r}")
    return f"{settings.queue_prefix}.{priority}"


def queue_names(settings: Settings) -> list[str]:
    """All queues, highest priority first."""
    return [queue_name(settings, p) for p in PRIORITIES]


def serves_default(settings: Settings, model: str | None) -> bool:
    """Whether jobs for ``model`` go to the default queues (``{prefix}.high`` ...), which workers serving the
    deployment's default model consume.

    The default is ``RERANKQ_MODEL``. Where that is not set at all, every model counts as the default: one
    model per Redis, the common case, with today's queue names. Set it on every process (producers, gateway,
    workers) when several models share one Redis: then each other model gets queues of its own."""
    return model is None or model == settings.model or "model" not in settings.model_fields_set


def model_slug(model: str) -> str:
    """A queue-safe, readable token for a model SPEC (a path or an id), unique by a short hash."""
    readable = re.sub(r"[^a-z0-9._-]+", "-", model.lower()).strip("-.")[-40:]
    return f"{readable}-{hashlib.sha1(model.encode()).hexdigest()[:8]}"


def model_queue_names(settings: Settings, model: str | None) -> list[str]:
    """The queues of jobs for ``model``, highest priority first; a worker serving ``model`` consumes exactly
    these (``{prefix}.m.{slug}.{priority}`` for a model other than the default)."""
    if serves_default(settings, model):
        return queue_names(settings)
    return [f"{settings.queue_prefix}.m.{model_slug(str(model))}.{p}" for p in PRIORITIES]


def job_queue(settings: Settings, job: dict[str, Any]) -> str:
    """The queue a (validated) job is published to: its model's, at its priority."""
    return model_queue_names(settings, job.get("model"))[PRIORITIES.index(job.get("priority", "normal"))]


def pending_key(queue: str) -> str:
    """Task ids sent to ``queue`` and not yet taken, by the time they were sent (negative: suspected lost)."""
    return f"{queue}:pending"


def pending_msg_key(queue: str) -> str:
    """The messages of ``queue`` that were put back (redelivered), by task id, until a worker takes them."""
    return f"{queue}:pending:msg"


def worker_key(settings: Settings, name: str) -> str:
    return f"{settings.queue_prefix}:worker:{name}"


def pairs_slot_key(settings: Settings, slot: int) -> str:
    return f"{settings.queue_prefix}:stats:pairs:{slot}"


def recent_key(settings: Settings) -> str:
    return f"{settings.queue_prefix}:gateway:recent"


def job_key(settings: Settings, job_id: str) -> str:
    return f"{settings.queue_prefix}:job:{job_id}"


def notify_key(settings: Settings, client_id: str) -> str:
    return f"{settings.queue_prefix}:notify:{client_id}"


def recall_notify_key(settings: Settings, job_id: str) -> str:
    """Where a job's recall embeddings announce their ends to the reranker's worker waiting for them."""
    return f"{settings.queue_prefix}:job:{job_id}:recall"


def done_key(settings: Settings, job_id: str) -> str:
    return f"{settings.queue_prefix}:job:{job_id}:done"


def control_queue(settings: Settings) -> str:
    """The Celery queue of batch runs."""
    return f"{settings.queue_prefix}.control"


def batch_key(settings: Settings, batch_id: str, part: str = "") -> str:
    """A batch's record, or one of its working keys (``emitted``, ``errors``, ``cids``, ``lock``)."""
    return f"{settings.queue_prefix}:batch:{batch_id}" + (f":{part}" if part else "")


def batches_key(settings: Settings) -> str:
    return f"{settings.queue_prefix}:batches"


def cancels_key(settings: Settings) -> str:
    return f"{settings.queue_prefix}:cancels"


def dlq_key(settings: Settings) -> str:
    return f"{settings.queue_prefix}:dlq"


def callback_keys(settings: Settings) -> list[str]:
    """The callback outbox: ``[due, events, dropped]`` (``rerankq.callbacks``)."""
    return [f"{settings.queue_prefix}:callbacks:{name}" for name in ("due", "events", "dropped")]


VECTOR_PREFIX = b"vec1:"  # a cached embedding: this, then its float32 little-endian bytes (a score: its repr)


def score_key(digest: str) -> str:
    """A cached score, by the content digest of its pair (``rerankq.models.scorekeys``), in ``cache.redis_url``. Not
    under the queue prefix on purpose: a content key means the same score in every deployment that reaches it."""
    return f"rerankq:score:{digest}"
