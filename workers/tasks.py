"""The Celery task ``rerankq.rerank``: hands one job to this process's runtime and waits for it.

The task body is thin on purpose: batching across jobs happens in ``workers.runtime``; the task thread
blocks until its job's result and state are written, so ``acks_late`` acknowledges only finished work
and Flower shows each job's real runtime and outcome.
"""

from __future__ import annotations

from typing import Any

from celery import Celery
from celery.exceptions import Reject

from rerankq import keys
from rerankq.errors import InvalidRequest, JobFailed, TransientError
from rerankq.schema import parse_job
from rerankq.settings import Settings

_runtime: Any = None


def install(runtime: Any) -> None:
    """Set the runtime tasks hand jobs to (one per process, built before the worker consumes)."""
    global _runtime
    _runtime = runtime


def register(app: Celery, settings: Settings) -> None:
    @app.task(name=keys.TASK_NAME, acks_late=True, throws=(JobFailed, InvalidRequest))
    def rerank(job: dict[str, Any]) -> dict[str, str]:
        if _runtime is None:
            raise RuntimeError("no runtime installed: start workers with `rerankq worker`")
        job_id = job.get("job_id")
        try:
            wire = parse_job(job, settings).wire()  # messages from other producers are checked too
        except InvalidRequest as exc:
            if job_id:
                _runtime.store.finish_many([(str(job_id), "failed", {"error": str(exc)})])
            raise
        try:
            state = _runtime.submit(wire).result()
        except TransientError as exc:
            raise Reject(str(exc), requeue=True) from exc  # redelivered; the rewrite is idempotent
        if state == "failed":
            raise JobFailed(str(job_id), state, _runtime.store.status(job_id).get("error"))
        return {"job_id": str(job_id), "state": state}
