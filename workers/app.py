"""The worker's Celery app: JSON only, late acknowledgement, task events for Flower, one queue per priority.

Reservations are bounded by the runtime, not by prefetch: the consumer fetches only while a round is being
formed (``rerankq.worker.intake.IntakeGate``). The threads pool has room for two rounds' task threads (one being
scored, one being formed) plus jobs waiting out a media retry; they only wait on the runtime (one model).
Unknown or undecodable queue entries go to the dead-letter list (``rerankq.worker.transport``).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from celery import Celery
from kombu import Queue

from rerankq import celeryconf, keys
from rerankq.settings import Settings
from rerankq.worker.transport import DLQ_KEY_OPTION

if TYPE_CHECKING:
    from rerankq.worker.runtime import Runtime


def worker_config(settings: Settings, queues: list[str] | None = None) -> dict[str, Any]:
    """Celery settings of a worker (on top of the producer-shared ``rerankq.celeryconf.celery_config``);
    ``queues`` default to the default model's (``keys.model_queue_names`` gives a worker's own)."""
    shared = celeryconf.celery_config(settings)
    transport = {**shared["broker_transport_options"], DLQ_KEY_OPTION: keys.dlq_key(settings)}
    sentinel = settings.redis_url.startswith("sentinel://")
    return {
        **shared,
        **celeryconf.result_backend_config(settings),
        "broker_transport": f"rerankq.worker.transport:{'SentinelTransport' if sentinel else 'Transport'}",
        "broker_transport_options": transport,
        "task_queues": [Queue(name, routing_key=name) for name in queues or keys.queue_names(settings)],
        "task_acks_late": True,  # acknowledge after the outcome is written: a crash redelivers the job
        "task_reject_on_worker_lost": True,
        "worker_prefetch_multiplier": 1,
        "worker_concurrency": 3 * settings.batch.max_jobs,
        "worker_pool": "threads",
        "worker_send_task_events": True,  # Flower: every job as a task, with state and runtime
        "worker_hijack_root_logger": False,
        "worker_redirect_stdouts": False,
        "worker_cancel_long_running_tasks_on_connection_loss": False,
    }


def make_app(settings: Settings, queues: list[str] | None = None, runtime: Runtime | None = None) -> Celery:
    """A worker app with the rerank task; with ``runtime``, the task hands jobs to it and the intake gate feeds
    it (a batcher's and Flower's apps have none: Flower lists the task, a batcher consumes no rerank queue)."""
    from rerankq.worker.tasks import register  # imported here: Flower's app needs no model side (torch)

    app = Celery("rerankq-worker", set_as_current=False, events="rerankq.worker.events:WorkerEvents")
    app.conf.update(worker_config(settings, queues))
    if runtime is not None:
        from rerankq.worker.intake import gate_for
        from rerankq.worker.invalid import decode_errors_for

        app.steps["consumer"].add(gate_for(runtime))
        app.steps["consumer"].add(decode_errors_for(runtime))
    register(app, settings, runtime)
    return app
