"""The ``rerankq.batch`` Celery task: run one batch (``BatchRunner``) on the control queue.

Every ``rerankq worker`` consumes the control queue beside its model's (``rerankq.cli`` registers this task on
it), and so does ``rerankq batcher``, a process that runs batches only. The task holds its message for as long
as the batch runs; the lease keeper renews it, so a live runner is never redelivered and a dead one's batch
resumes on another process within a lease. On shutdown the runner stops between steps and the message goes
back to the queue.
"""

from __future__ import annotations

import logging
import threading
from typing import Any

from celery import Celery, Task, signals
from celery.exceptions import Ignore, Reject

from rerankq import keys
from rerankq.errors import TransientError
from rerankq.settings import Settings

logger = logging.getLogger(__name__)
_stop = threading.Event()


def _shutting_down(**_: Any) -> None:
    _stop.set()


def register(app: Celery, settings: Settings) -> None:
    """Register ``rerankq.batch`` on a worker app (its queue: ``keys.control_queue``)."""
    from rerankq.client.batches.runner import BatchRunner, Interrupted, LostLock
    from rerankq.client.client import RerankClient

    signals.worker_shutting_down.connect(_shutting_down, weak=False)
    clients: list[RerankClient] = []
    lock = threading.Lock()

    def client() -> RerankClient:
        with lock:
            if not clients:
                clients.append(RerankClient(settings))
            return clients[0]

    @app.task(name=keys.BATCH_TASK_NAME, bind=True, acks_late=True)
    def run_batch(self: Task, batch_id: str) -> dict[str, Any]:
        try:
            state = BatchRunner(client(), str(batch_id), _stop).run()
        except Interrupted:
            raise Reject(f"batch {batch_id}: shutting down; it resumes on another process", requeue=True) from None
        except LostLock:
            raise Ignore() from None
        except TransientError as exc:
            logger.warning("batch %s: %s; it resumes shortly", batch_id, exc)
            _stop.wait(2.0)
            raise Reject(str(exc), requeue=True) from exc
        return {"batch_id": batch_id, "state": state.value if state else None}
