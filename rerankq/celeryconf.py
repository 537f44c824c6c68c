"""Celery's configuration for rerankq's producers and workers: broker and transport options, JSON only, the
queues (``rerankq.keys`` names them), the result backend. One place, so that a producer in this package and a
worker agree on every option that changes what a message looks like or where it goes.
"""

from __future__ import annotations

from typing import Any

from rerankq.keys import queue_name
from rerankq.settings import Settings


def celery_config(settings: Settings) -> dict[str, Any]:
    """Celery settings shared by producers and workers, so both agree on the broker's behaviour.

    - JSON only, both ways: no pickle from a queue anyone can write to. Job state lives in our own records.
      Producers run without a result backend (a backend would subscribe to every job they send); workers store
      the outcome of a plain Celery producer's message in Celery's result backend (``result_backend_config``), so
      any Celery client can ``AsyncResult(id).get()`` (the SDK's messages say ``ignore_result``: it reads the
      job record).
    - Leases: kombu's visibility timeout is ``settings.lease_s``; workers renew the messages they hold every
      ``lease_s / 3`` (``rerankq.worker.leases``), and every worker sweeps for expired ones every ``lease_s / 4``
      (``unacked_restore_interval``, scanning each time): a dead worker's jobs are back within about one lease,
      a live worker's are never redelivered.
    - ``queue_order_strategy=priority``: a worker drains ``high`` before ``normal`` before ``low``
      (separate queues; Celery's in-queue priority emulation on Redis is unreliable).
    """
    transport: dict[str, Any] = {
        "visibility_timeout": settings.lease_s, "queue_order_strategy": "priority",
        "unacked_restore_interval": max(settings.lease_s / 4, 0.5), "unacked_restore_throttle": 1,
        # the sweep's lock: held for a moment; if its holder dies holding it, the next sweep waits this long
        "unacked_mutex_expire": max(settings.lease_s, 10),
    }
    if settings.redis_url.startswith("sentinel://"):
        transport["master_name"] = settings.redis_master_name
    return {
        "broker_url": settings.redis_url,
        "broker_transport_options": transport,
        "broker_connection_retry_on_startup": True,
        "broker_connection_max_retries": None,  # a Redis restart or failover is waited out, not fatal
        "task_serializer": "json",
        "result_serializer": "json",
        "accept_content": ["json"],
        "event_serializer": "json",
        "task_ignore_result": False,
        "task_default_queue": queue_name(settings, "normal"),
        "task_send_sent_event": True,  # Flower shows a job from the moment it is queued
    }


def result_backend_config(settings: Settings) -> dict[str, Any]:
    """Celery's result backend on the same Redis: what workers write, and what a Celery client in any language
    configures to read a job's outcome with ``AsyncResult(id).get()``."""
    options = {"master_name": settings.redis_master_name} if settings.redis_url.startswith("sentinel://") else {}
    return {"result_backend": settings.redis_url, "result_backend_transport_options": options,
            "result_expires": settings.results.ttl_s}
