"""Every Redis key, queue and task name rerankq uses, in one place, all under ``settings.queue_prefix``.

Several deployments can share one Redis by choosing different prefixes. Celery's own keys (its queues'
lists, ``unacked``, event fan-out) live under the same queue names; our job records live beside them.

| name | type | what |
|---|---|---|
| ``{prefix}.high`` / ``.normal`` / ``.low`` | list (Celery queue) | jobs waiting, one queue per priority |
| ``{prefix}:job:{id}`` | hash | the job record (``rerankq.jobs``) |
| ``{prefix}:job:{id}:done`` | list | one token once the job is terminal; waiters ``BLPOP`` it |
"""

from __future__ import annotations

from typing import Any

from rerankq.settings import Settings

TASK_NAME = "rerankq.rerank"
PRIORITIES = ("high", "normal", "low")  # the order workers drain them in


def queue_name(settings: Settings, priority: str) -> str:
    """The Celery queue of a priority (``high`` | ``normal`` | ``low``)."""
    if priority not in PRIORITIES:
        raise ValueError(f"priority must be one of {', '.join(PRIORITIES)}, got {priority!r}")
    return f"{settings.queue_prefix}.{priority}"


def queue_names(settings: Settings) -> list[str]:
    """All queues, highest priority first."""
    return [queue_name(settings, p) for p in PRIORITIES]


def job_key(settings: Settings, job_id: str) -> str:
    return f"{settings.queue_prefix}:job:{job_id}"


def done_key(settings: Settings, job_id: str) -> str:
    return f"{settings.queue_prefix}:job:{job_id}:done"


def celery_config(settings: Settings) -> dict[str, Any]:
    """Celery settings shared by producers and workers, so both agree on the broker's behaviour.

    - JSON only, both ways (SPEC §6); no Celery result backend: job state lives in our own records.
    - One visibility timeout (``settings.visibility_timeout_s``): a job not acknowledged within it is
      redelivered. Workers acknowledge after the result is written (``acks_late``), so it must exceed the
      slowest batch.
    - ``queue_order_strategy=priority``: a worker drains ``high`` before ``normal`` before ``low``
      (separate queues; Celery's in-queue priority emulation on Redis is unreliable).
    """
    transport = {"visibility_timeout": settings.visibility_timeout_s, "queue_order_strategy": "priority"}
    return {
        "broker_url": settings.redis_url,
        "broker_transport_options": transport,
        "broker_connection_retry_on_startup": True,
        "task_serializer": "json",
        "result_serializer": "json",
        "accept_content": ["json"],
        "event_serializer": "json",
        "task_ignore_result": True,
        "task_default_queue": queue_name(settings, "normal"),
        "task_send_sent_event": True,  # Flower shows a job from the moment it is queued
    }
