"""The Celery task ``rerankq.rerank``: checks one message, hands its job to this process's runtime, waits.

The task body is thin on purpose: batching across jobs happens in ``rerankq.worker.runtime``; the task thread
blocks until its job's record is final, so ``acks_late`` acknowledges only finished work and Flower shows
each job's real runtime and a truthful outcome:

- succeeded → SUCCESS, and the result (or, when it lies in S3, its pointer) in Celery's result backend, so
  ``AsyncResult(id).get()`` works from any Celery client;
- failed → FAILURE with the reason (``JobFailed``); cancelled or expired → REVOKED (not a green SUCCESS);
- the outcome goes to the result backend only for a message that wants one: Celery's per-message
  ``ignore_result`` is honoured, and the SDK (so the gateway and batch runs) sends it, since it reads the
  job record instead (three Redis commands per job saved: the backend's read, write and ``PUBLISH``);
- a transient failure → the message goes back to its queue (``Reject(requeue=True)``);
- a message that is not a rerank job (no arguments, more than one, not an object) → the dead-letter list.

Producers in any language may send the message with the job JSON as its only argument and no record: the
worker validates it, creates the record (the job id is its ``job_id``, else the Celery task id) and runs it;
an invalid one ends ``failed`` with the validation error under that id.
"""

from __future__ import annotations

import json
import logging
import re
import time
from typing import Any

import redis
from celery import Celery, Task
from celery.exceptions import Ignore, Reject

from rerankq import keys
from rerankq.errors import InvalidRequest, JobFailed, RetryLater, TransientError
from rerankq.jobs import JobState
from rerankq.models.engine import Recalled
from rerankq.schema import JOB_ID_PATTERN, Job, RerankJob, parse_job
from rerankq.settings import Settings
from rerankq.worker.invalid import fail_invalid
from rerankq.worker.recall import Recaller, RecallFailed
from rerankq.worker.runtime import Runtime
from rerankq.worker.transport import dead_letter

logger = logging.getLogger(__name__)


def register(app: Celery, settings: Settings, runtime: Runtime | None) -> None:
    """The ``rerankq.rerank`` task on ``app``, handing jobs to ``runtime`` (one per process; None on apps that
    only name the task, as Flower's)."""

    recaller = Recaller(app, runtime.store, settings, runtime.finisher.results) if runtime is not None else None

    @app.task(name=keys.TASK_NAME, bind=True, acks_late=True, throws=(JobFailed,))
    def rerank(self: Task, *args: Any, **kwargs: Any) -> dict[str, Any]:
        if runtime is None:
            raise RuntimeError("this process has no model: start workers with `rerankq worker`")
        try:
            job = _accept(self, runtime, settings, args, kwargs)
        except BaseException:
            runtime.transit.arrived(str(self.request.id))  # it will not reach the runtime
            raise
        job, recalled, failure = _recall(self, runtime, recaller, job)
        run = runtime.submit(job, redelivered=bool((self.request.delivery_info or {}).get("redelivered")),
                             task_id=str(self.request.id), recalled=recalled, failure=failure)
        try:
            state = run.future.result()
        except TransientError as exc:
            if isinstance(exc, RetryLater):
                time.sleep(exc.after_s)  # the lease is renewed meanwhile
            raise Reject(str(exc), requeue=True) from exc  # redelivered; the record says queued
        return _report(self, runtime, job, state, run.final)


def _accept(task: Task, runtime: Runtime, settings: Settings, args: tuple[Any, ...],
            kwargs: dict[str, Any]) -> Job:
    """The message's job, validated, with a record; or the message goes to the dead-letter list / fails."""
    request = task.request
    queue = (request.delivery_info or {}).get("routing_key") or "?"
    if kwargs or len(args) != 1 or not isinstance(args[0], dict):
        reason = ("a rerankq.rerank message takes the job JSON object as its only argument; got "
                  f"{len(args)} arguments{' and keyword arguments' if kwargs else ''}"
                  f"{'' if len(args) != 1 else ' (a ' + type(args[0]).__name__ + ')'}")
        raw = json.dumps({"task_id": request.id, "args": list(args), "kwargs": kwargs}, default=repr)
        dead_letter(runtime.store.redis, keys.dlq_key(settings), queue, reason, raw, kind="message")
        logger.error("message %s moved to the dead-letter list: %s", request.id, reason)
        raise Reject(reason, requeue=False)
    data = dict(args[0])
    job_id = str(data.get("job_id") or request.id)
    data["job_id"] = job_id
    try:
        job = parse_job(data, settings)
    except InvalidRequest as exc:
        priority = data.get("priority") if data.get("priority") in keys.PRIORITIES else "normal"
        fail_invalid(runtime, job_id if _valid_id(job_id) else str(request.id), str(exc), str(priority),
                     str(request.id))
        raise JobFailed(job_id, JobState.FAILED, str(exc)) from None
    if request.id == job_id:  # the SDK's message (its task id is the job id), or a raw one without job_id
        if not (request.headers or {}).get(keys.RECORDED_HEADER):  # the SDK made the record before publishing
            runtime.store.create_many([job.wire()])  # a no-op when the producer made the record
        return job
    # A raw message naming its job_id: it owns the job only if it created the record (or is that message,
    # redelivered). Another message with the same job_id is a duplicate: it must not run the job twice.
    if not runtime.store.create_many([job.wire()], task_id=str(request.id))[0] and \
            runtime.store.creator(job_id) != str(request.id):
        logger.info("message %s: job %s exists already; not run again", request.id, job_id)
        raise Ignore()
    return job


def _recall(task: Task, runtime: Runtime, recaller: Recaller | None, job: Job
            ) -> tuple[Job, Recalled | None, str | None]:
    """A rerank job's recall stage (``rerankq.worker.recall``), before the job reaches the runtime: the job
    narrowed to the documents kept and what was kept, or the reason the job fails. Redis or S3 failing on the
    way sends the message back to its queue (a later attempt finds the embedding jobs sent already)."""
    if recaller is None or not isinstance(job, RerankJob) or job.recall is None:
        return job, None, None
    runtime.transit.arrived(str(task.request.id))  # waiting here must not hold a round of other jobs back
    try:
        narrowed, recalled = recaller.narrow(job)
    except RecallFailed as exc:
        return job, None, str(exc)
    except (redis.RedisError, TransientError) as exc:
        raise Reject(f"job {job.id}: recall: {exc}", requeue=True) from exc
    return narrowed, recalled, None


def _valid_id(job_id: str) -> bool:
    return re.match(JOB_ID_PATTERN, job_id) is not None


def _report(task: Task, runtime: Runtime, job: Job, state: JobState | None,
            final: dict[str, Any] | None) -> dict[str, Any]:
    """The task's outcome for Celery: the result, a failure with its reason, or a revocation."""
    if state == JobState.SUCCEEDED:
        return final or {"job_id": job.id, "state": state.value}
    if state == JobState.FAILED:
        error = runtime.store.status(job.id).get("error") if final is None else final.get("error")
        raise JobFailed(job.id, state, error)
    if state in (JobState.CANCELLED, JobState.EXPIRED):
        if not task.request.ignore_result:  # Celery skips the backend on its own for the other outcomes
            task.backend.mark_as_revoked(task.request.id, f"job {job.id} {state}", request=task.request)
        task.send_event("task-revoked", terminated=False, signum=None, expired=state == JobState.EXPIRED)
    raise Ignore()  # acknowledged; another attempt, or nobody, has more to say
