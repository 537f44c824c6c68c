"""A rerank job's recall stage (``"recall": {"model": EMBED_MODEL, "top_k": K}``): embed the query and the
documents with an embedding model, keep the K documents nearest the query, rerank only those.

The reranker's worker runs it in the job's task thread, before the job reaches its runtime: it submits two
embedding jobs of its own to the embedding model's queue (the query, with the job's instruction or the
embedding model's default; the documents, with the embedding model's default), waits for them, and hands the
runtime the job narrowed to the K nearest documents (cosine of unit vectors; ties keep document order). The two
are ordinary jobs with ids derived from the job's (``JOB.recall-q``, ``JOB.recall-d``): a worker that dies
while waiting leaves them running, and the attempt that gets the job next finds them by id and waits for the
same ones (a record that exists is never sent again), so a crash costs no second embedding. An embedding model
caches as usual: a document seen before is not embedded again.

What the result says (``rerankq.models.engine.Recalled``): ``recall.recalled`` (the documents kept, in document
order) and each one's similarity; documents not kept have no score (``null``) and no error; a document whose
embedding failed is not kept, and its error is the job's error for it. A job whose recall fails as a whole (its
query cannot be embedded, the embedding model refuses it) fails with the reason.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import time
from typing import Any

import numpy as np
import redis
from celery import Celery

from rerankq import keys
from rerankq.jobs import TERMINAL, JobRecord, JobState
from rerankq.jobstore import JobStore
from rerankq.models.engine import Recalled
from rerankq.results import ResultStore, vector_bytes
from rerankq.schema import RerankJob
from rerankq.settings import Settings

logger = logging.getLogger(__name__)

WAIT_SLICE_S = 2.0  # a blocking wait on the notify list is re-issued this often (and the records read again)


class RecallFailed(Exception):
    """The recall stage of a job failed as a whole; the job fails with this reason."""


def child_ids(job_id: str) -> tuple[str, str]:
    """The ids of a job's two recall jobs (query, documents): the job's own with a suffix, or, for an id too long
    for that, a digest of it."""
    base = job_id if len(job_id) <= 110 else hashlib.sha256(job_id.encode()).hexdigest()[:40]
    return f"{base}.recall-q", f"{base}.recall-d"


class Recaller:
    """Runs recall stages for one worker process: submits the embedding jobs through this worker's Celery app and
    job store, waits for their ends on a notify list of the job's own, and narrows the job."""

    def __init__(self, app: Celery, store: JobStore, settings: Settings, results: ResultStore) -> None:
        self.app, self.store, self.settings, self.results = app, store, settings, results

    def narrow(self, job: RerankJob) -> tuple[RerankJob, Recalled | None]:
        """The job to rerank and what recall kept; raises ``RecallFailed``. A job with no more documents than
        ``top_k`` is reranked whole, with no embedding."""
        recall = job.recall
        if recall is None or len(job.documents) <= recall.top_k:
            return job, None
        own = self.store.records([job.id])[0]
        if own is None or own.state not in (JobState.QUEUED, JobState.RUNNING):
            return job, None  # ended or cancelled meanwhile: the runtime settles it, nothing is embedded
        qid, did = child_ids(job.id)
        notify = keys.recall_notify_key(self.settings, job.id)
        common: dict[str, Any] = {"task": "embed", "model": recall.model, "priority": job.priority,
                                  "encoding_format": "base64"}
        if job.cache is False:
            common["cache"] = False
        deadline = own.deadline_at
        if deadline is not None:
            common["expires_at"] = deadline
        query = {**common, "job_id": qid, "inputs": [job.query.model_dump(exclude_none=True)],
                 **({"instruction": job.instruction} if job.instruction else {})}
        documents = {**common, "job_id": did, "inputs": [d.model_dump(exclude_none=True) for d in job.documents]}
        self._submit([query, documents], notify)
        ended = self._wait([qid, did], notify, deadline)
        self.store.redis.delete(notify)
        q_vectors, q_errors = self._vectors(ended[qid], "query")
        if q_vectors[0] is None:
            raise RecallFailed(f"recall: the query could not be embedded: {q_errors.get(0, 'no vector')}")
        d_vectors, d_errors = self._vectors(ended[did], "documents")
        similarity = {i: float(np.dot(q_vectors[0], v)) for i, v in enumerate(d_vectors) if v is not None}
        nearest = sorted(similarity, key=lambda i: (-similarity[i], i))[:recall.top_k]
        kept = tuple(sorted(nearest))
        errors = {i: f"documents[{i}]: recall: {why}" for i, why in d_errors.items()}
        if not kept:
            raise RecallFailed("recall: no document could be embedded: "
                               + "; ".join(errors[i] for i in sorted(errors)[:3]))
        narrowed = job.model_copy(update={"documents": [job.documents[i] for i in kept]})
        return narrowed, Recalled(kept, len(job.documents), errors, tuple(similarity[i] for i in kept),
                                  recall.model, recall.top_k)

    def _submit(self, jobs: list[dict[str, Any]], notify: str) -> None:
        """Create and publish the jobs not created yet (a later attempt finds them and only waits)."""
        created = self.store.create_many(jobs, sent=True, notify=notify)
        fresh = [job for job, new in zip(jobs, created, strict=True) if new]
        for job in fresh:
            self.app.send_task(keys.TASK_NAME, args=[job], task_id=job["job_id"],
                               queue=keys.job_queue(self.settings, job), ignore_result=True,
                               headers={keys.RECORDED_HEADER: 1})
        if fresh:
            self.store.redis.expire(notify, int(self.settings.results.failure_ttl_s))
        logger.info("recall: %d embedding jobs sent (%d found already)", len(fresh), len(jobs) - len(fresh))

    def _wait(self, ids: list[str], notify: str, deadline: float | None) -> dict[str, JobRecord]:
        """The records of ``ids`` once all have ended; ``RecallFailed`` if one is gone or the job's deadline
        passes first."""
        while True:
            records = self.store.records(ids)
            missing = [i for i, r in zip(ids, records, strict=True) if r is None]
            if missing:
                raise RecallFailed(f"recall: embedding job {missing[0]} is gone (expired or deleted)")
            if all(r is not None and r.state in TERMINAL for r in records):
                return {r.job_id: r for r in records if r is not None}
            if deadline is not None and time.time() > deadline:
                raise RecallFailed("recall: the job's deadline passed while its documents were embedded")
            with contextlib.suppress(redis.TimeoutError):
                self.store.redis.blpop([notify], timeout=WAIT_SLICE_S)

    def _vectors(self, record: JobRecord, what: str) -> tuple[list[np.ndarray | None], dict[int, str]]:
        """The unit vectors of an ended embedding job (None where an input failed) and its errors by index."""
        if record.state != JobState.SUCCEEDED:
            raise RecallFailed(f"recall: embedding the {what} {record.state.value}: {record.error}")
        result = self.results.get(record.result_uri) if record.result_uri else json.loads(record.result or "{}")
        vectors = [None if v is None else np.frombuffer(vector_bytes(v), dtype="<f4")
                   for v in result.get("embeddings", [])]
        return vectors, {int(e["index"]): str(e["error"]) for e in result.get("errors", [])}
