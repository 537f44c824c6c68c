"""The worker's Celery app: JSON only, late acknowledgement, task events for Flower, one queue per priority.

Prefetch: the worker runs jobs on a *threads* pool of ``2 * batch.max_jobs`` threads that only wait on the
runtime (one model, see ``workers.runtime``), with ``worker_prefetch_multiplier=1``: the worker holds at
most one round being scored plus one being prepared, unacknowledged, and leaves the rest of the queue to
other workers.
"""

from __future__ import annotations

from typing import Any

from celery import Celery
from kombu import Queue

from rerankq import keys
from rerankq.settings import Settings


def worker_config(settings: Settings, queues: list[str] | None = None) -> dict[str, Any]:
    """Celery settings of a worker (on top of the producer-shared ``keys.celery_config``); ``queues`` default to
    the default model's (``keys.worker_queue_names`` gives a worker's own)."""
    return {
        **keys.celery_config(settings),
        "task_queues": [Queue(name, routing_key=name) for name in queues or keys.queue_names(settings)],
        "task_acks_late": True,  # acknowledge after the result is written: a crash redelivers the job
        "task_reject_on_worker_lost": True,
        "worker_prefetch_multiplier": 1,
        "worker_concurrency": 2 * settings.batch.max_jobs,
        "worker_pool": "threads",
        "worker_send_task_events": True,  # Flower: every job as a task, with state and runtime
        "worker_hijack_root_logger": False,
        "worker_redirect_stdouts": False,
    }


def make_app(settings: Settings, queues: list[str] | None = None) -> Celery:
    """A worker app with the rerank task registered."""
    from workers.tasks import register

    app = Celery("rerankq-worker", set_as_current=False)
    app.conf.update(worker_config(settings, queues))
    register(app, settings)
    return app
