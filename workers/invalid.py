"""Ending the job of a message that can never run: its job JSON is invalid (``rerankq.worker.tasks``) or its body
cannot be decoded at all (``DecodeErrors``: a body too deeply nested for JSON, not UTF-8, ...). Either way the job
ends ``failed`` with the reason, its waiters wake, its completion callback's event is written, its Celery result
is FAILURE, and the worker goes on.

Celery itself only logs an undecodable body and acknowledges it (``Consumer.on_decode_error``): the record the
producer made would stay ``queued`` for good. ``DecodeErrors`` is the consumer bootstep that replaces that: the
message goes to the dead-letter list (``rerankq dlq list``) and, when a job id can be recovered from it (the
body's ``"job_id"``, the ``argsrepr`` header, else the task id), that job is failed.
"""

from __future__ import annotations

import json
import logging
import re
from types import MethodType
from typing import Any, Protocol

from celery import bootsteps
from kombu.utils.encoding import bytes_to_str

from rerankq import keys
from rerankq.errors import JobFailed
from rerankq.jobs import JobState
from rerankq.jobstore import JobStore
from rerankq.schema import JOB_ID_PATTERN
from rerankq.settings import Settings
from rerankq.worker.transport import dead_letter

logger = logging.getLogger(__name__)

_BODY_ID = re.compile(rb'"job_id"\s*:\s*"([^"\\]{1,256})"')
_REPR_ID = re.compile(r"""['"]job_id['"]\s*:\s*['"]([^'"\\]{1,256})['"]""")


class Owner(Protocol):
    """What ending an invalid job needs of the worker's runtime (``rerankq.worker.runtime.Runtime``)."""

    settings: Settings
    store: JobStore

    @property
    def metrics(self) -> Any: ...

    @property
    def transit(self) -> Any: ...


def fail_invalid(runtime: Owner, job_id: str, error: str, priority: str, task_id: str) -> bool:
    """End the job of an invalid message ``failed`` with ``error``: a new record, or the queued record its
    producer made for it (``create_many``, the SDK). A record that another message created belongs to that
    message and is left as it is; so is a job that has started or ended. True when this call ended it."""
    store = runtime.store
    ended = store.fail_new(job_id, error, priority) or (
        store.creator(job_id) in (None, task_id) and store.fail_queued(job_id, error) == JobState.QUEUED)
    if ended:
        runtime.metrics.job_ended(JobState.FAILED)
    logger.info("job %s failed: invalid request: %s", job_id, error[:500])
    return ended


def job_id_in(headers: dict[str, Any], body: Any) -> str | None:
    """The job id an undecodable message names: the body's ``"job_id"``, the ``argsrepr`` header's, else its
    task id (the SDK's messages use the job id). None when none is a valid job id."""
    raw = body.encode() if isinstance(body, str) else body if isinstance(body, bytes) else b""
    found = _BODY_ID.search(raw)
    candidates = [bytes_to_str(found.group(1)) if found else None]
    found_repr = _REPR_ID.search(str(headers.get("argsrepr") or ""))
    candidates += [found_repr.group(1) if found_repr else None, headers.get("id")]
    return next((str(c) for c in candidates if c and re.match(JOB_ID_PATTERN, str(c))), None)


def on_undecodable(runtime: Owner, app: Any, message: Any, exc: BaseException) -> None:
    """Dead-letter a message whose body cannot be decoded, fail the job it names, then acknowledge it."""
    headers = message.headers if isinstance(message.headers, dict) else {}
    task_id = str(headers.get("id") or "?")
    queue = str((message.delivery_info or {}).get("routing_key") or "?")
    reason = f"the message body cannot be decoded ({type(exc).__name__}: {str(exc)[:300]})"
    raw = getattr(message, "_raw", None)
    dead_letter(runtime.store.redis, keys.dlq_key(runtime.settings), queue, reason,
                json.dumps(raw, default=repr) if isinstance(raw, dict) else bytes_to_str(message.body), kind="entry")
    logger.error("message %s moved to the dead-letter list: %s", task_id, reason)
    job_id = job_id_in(headers, message.body)
    if job_id is not None and headers.get("task") == keys.TASK_NAME:
        fail_invalid(runtime, job_id, reason, "normal", task_id)
        if task_id != "?":
            app.backend.mark_as_failure(task_id, JobFailed(job_id, JobState.FAILED, reason))
    runtime.transit.arrived(task_id)
    message.ack()


class DecodeErrors(bootsteps.StartStopStep):
    """Consumer bootstep: undecodable message bodies end their jobs (``on_undecodable``) instead of being only
    logged and dropped. Celery builds bootsteps from classes: ``decode_errors_for(runtime)`` binds one."""

    requires = ("celery.worker.consumer.tasks:Tasks",)
    runtime: Owner | None = None

    def start(self, c: Any) -> None:
        runtime = self.runtime
        if runtime is None:
            return

        def on_decode_error(consumer: Any, message: Any, exc: BaseException) -> None:
            try:
                on_undecodable(runtime, consumer.app, message, exc)
            except Exception:  # Redis down: Celery's own handling (log, acknowledge) still runs
                logger.exception("could not end the job of an undecodable message")
                original(message, exc)

        original = c.on_decode_error
        c.on_decode_error = MethodType(on_decode_error, c)


def decode_errors_for(runtime: Owner) -> type[DecodeErrors]:
    """The ``DecodeErrors`` bootstep of a worker whose runtime is ``runtime``."""
    return type("DecodeErrors", (DecodeErrors,), {"runtime": runtime})
