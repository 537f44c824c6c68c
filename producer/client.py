"""``RerankClient``: submit rerank and embedding jobs, poll their status, wait for results (docs/USAGE.md,
*Python SDK*).

Jobs are enqueued *by name* (``rerankq.rerank``) with Celery's ``send_task``; this module never imports
worker code, torch or transformers. Each submit first creates the job record (our own state, so an unknown
id is "no such job" rather than Celery's PENDING), then publishes the message; a ``job_id`` that already
has a record is not published again (idempotency). ``submit_many`` does both steps for a whole chunk in one
pipelined round trip each.

With several Redis servers (``RERANKQ_REDIS_SHARDS``) each job goes to the shard its id names, through a
single-shard client per shard (``rerankq.client.sharded``); with one, nothing of that is built.

Waiting never polls in a loop: terminal states push a token on a per-job list that ``result`` and
``as_completed`` block on (``BLPOP``), so a waiting client costs Redis one blocked connection.
"""

from __future__ import annotations

import json
import time
import uuid
from collections.abc import Callable, Iterable, Iterator
from typing import Any

from celery import Celery

from rerankq import celeryconf, keys, registry, s3
from rerankq.batches import BatchRecord, BatchStore
from rerankq.callbacks import check_target
from rerankq.client.batch_submit import submit_batch, wait_batch
from rerankq.client.capcheck import ModelCheck
from rerankq.client.progress import Progress
from rerankq.client.sent_events import Audience, sent_events
from rerankq.client.sharded import ShardedParts
from rerankq.client.waiting import RECHECK_S, Completions, deadline_left
from rerankq.connections import redis_client
from rerankq.errors import CallbackRefused, CancelTooLate, InvalidRequest, JobFailed, NoSuchJob, TransientError
from rerankq.fanout import transport_for
from rerankq.jobs import TERMINAL, JobRecord, JobState
from rerankq.jobstore import JobStore
from rerankq.results import ResultStore
from rerankq.schema import Job, parse_job
from rerankq.settings import Settings

CHUNK = 500  # jobs per pipelined round trip in submit_many
WAIT_SLICE_S = 2.0  # a blocking wait is re-issued this often (redis-py's default socket timeout is 5 s)
CALLBACK_CHECK_S = 60.0  # a callback URL found acceptable is not looked up again for this long
# Celery's own message compression (kombu decompresses on any consumer): a job's JSON is most of its message, which
# Redis takes in, hands out and keeps again as held (``unacked``); text documents shrink by half or more.
MESSAGE_COMPRESSION = "zlib"


class RerankClient:
    """A handle on a rerankq deployment. ``RerankClient()`` reads ``RERANKQ_*``; or pass ``settings`` or
    keyword overrides: ``RerankClient(redis_url="redis://...")``. Jobs it submits announce their end on its own
    notify list, which ``as_completed`` and ``result`` wait on (``rerankq.client.waiting``); ``notify=False``
    for a client that submits and never waits (the list would fill until its TTL)."""

    def __init__(self, settings: Settings | None = None, *, notify: bool = True, **overrides: Any) -> None:
        self.settings = settings or Settings(**overrides)
        self.results = ResultStore(self.settings.s3_endpoint_url)
        self._callbacks_checked: dict[str, float] = {}  # callback URL -> when its host last passed
        # Several shards: one single-shard client each, and the routing (``rerankq.client.sharded``); the
        # attributes below are then the sharded ones (``redis`` and ``celery``: the home shard's).
        self.sharded = ShardedParts(self.settings, notify, self._part) if self.settings.redis_shards[1:] else None
        if self.sharded is not None:
            self.redis, self.celery = self.sharded.home.redis, self.sharded.home.celery
            self.jobs: Any = self.sharded.jobs
            self.completions: Any = self.sharded.completions
            return
        self.redis = redis_client(self.settings)
        self.models = ModelCheck(self.settings, lambda: registry.live_workers(self.redis, self.settings))
        self.jobs = JobStore(self.settings, self.redis)
        self.celery = Celery("rerankq-producer", set_as_current=False)
        self.celery.conf.update(celeryconf.celery_config(self.settings))
        self.celery.conf.broker_transport = transport_for(self.settings.redis_url)  # counts who hears its events
        self._audience = Audience()
        self.completions = Completions(self.redis, self.settings, notify)

    def _part(self, settings: Settings, notify: bool) -> RerankClient:
        part = RerankClient(settings, notify=notify)
        part.results = self.results
        return part

    def part_of(self, job_id: str) -> RerankClient:
        """The single-shard client of the shard a job (or batch) id lives on; this client with one Redis."""
        return self if self.sharded is None else self.sharded.part_of(job_id)  # type: ignore[return-value]

    def close(self) -> None:
        if self.sharded is not None:
            self.sharded.close()
            return
        self.celery.close()
        self.redis.close()

    def __enter__(self) -> RerankClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # submitting ----------------------------------------------------------------------------------
    def submit(self, request: dict[str, Any] | Job, notify: str | None = None) -> str:
        """Validate and enqueue one job; returns its id (the given ``job_id`` or a new one). ``notify``: a Redis
        list of the caller's own for the job's end (``STATE RECORD-KEY`` and a JSON line of its outcome; the
        gateway waits so) instead of this client's."""
        job = self._prepare(request)
        self._check_result_uri(job)
        self.check_callback_url(job.get("callback_url"))
        self._enqueue([job], notify or self.completions.key)
        return str(job["job_id"])

    def submit_many(self, requests: Iterable[dict[str, Any] | Job]) -> list[str]:
        """Validate every request first (nothing is enqueued if one is invalid; the error names the item,
        ``[2].priority: ...``), then enqueue them in chunks of ``CHUNK``: one round trip creates the
        records, one publishes the messages."""
        jobs = []
        for i, request in enumerate(requests):
            try:
                job = self._prepare(request)
                self._check_result_uri(job)
                self.check_callback_url(job.get("callback_url"))
            except InvalidRequest as exc:
                raise exc.at(f"[{i}]") from None
            jobs.append(job)
        for start in range(0, len(jobs), CHUNK):
            self._enqueue(jobs[start:start + CHUNK], self.completions.key)
        return [job["job_id"] for job in jobs]

    def embed(self, inputs: list[Any], *, model: str | None = None, timeout: float | None = None,
              **fields: Any) -> dict[str, Any]:
        """Embed ``inputs`` (texts, or objects with ``text`` / ``image`` / ``video``) as one embedding job and
        wait for its result: ``embeddings`` in input order. ``fields``: the job's others (``instruction``,
        ``dimensions``, ``encoding_format``, ``priority``, ...)."""
        request = {"task": "embed", "inputs": inputs, **({"model": model} if model else {}), **fields}
        return self.result(self.submit(request), timeout)

    def _prepare(self, request: dict[str, Any] | Job) -> dict[str, Any]:
        job = parse_job(request, self.settings).wire()
        job.setdefault("job_id", uuid.uuid4().hex)
        # what the live workers' models read (rerankq.client.capcheck): those of the job's shard, which serve it
        # (a shard that is down has no say in another's jobs)
        part = self if self.sharded is None else self.sharded.parts[self.sharded.shards.index(job["job_id"])]
        part.models.check(job)
        return job

    def _check_result_uri(self, job: dict[str, Any]) -> None:
        """Refuse a ``result_uri`` whose bucket does not exist, when this client can tell (it has S3
        credentials or an endpoint); otherwise the worker checks it before scoring."""
        if not job.get("result_uri"):
            return
        bucket = s3.split_uri(job["result_uri"])[0]
        if self.results.bucket_exists(bucket) is False:
            raise InvalidRequest(f"bucket {bucket!r} does not exist (create it, or leave result_uri out)",
                                 "result_uri")

    def check_callback_url(self, url: str | None) -> None:
        """Refuse a callback URL that ``callbacks.*`` refuses: scheme, host allow-list, and every address the host
        resolves to (``InvalidRequest`` naming ``callback_url``; a name that does not resolve too). A failed lookup
        lets it pass: every delivery checks the host again."""
        if not url or time.monotonic() - self._callbacks_checked.get(url, -CALLBACK_CHECK_S) < CALLBACK_CHECK_S:
            return
        try:
            check_target(url, self.settings.callbacks, unresolved_refused=True)
        except CallbackRefused as exc:
            raise InvalidRequest(str(exc), "callback_url") from None
        except TransientError:
            return
        self._callbacks_checked[url] = time.monotonic()

    def _enqueue(self, jobs: list[dict[str, Any]], notify: str | None = None) -> None:
        if self.sharded is not None:  # each shard's jobs through its own client
            return self.sharded.enqueue(jobs, notify)
        created = self.jobs.create_many(jobs, sent=True, notify=notify)
        fresh = [job for job, new in zip(jobs, created, strict=True) if new]
        if not fresh:
            return
        if notify is not None and notify == self.completions.key:
            self.completions.created(job["job_id"] for job in fresh)
        try:
            with self.celery.producer_or_acquire() as producer:
                events = sent_events(self.celery, producer.channel, len(fresh), self._audience)
                with producer.batch(max_size=4 * len(fresh)):
                    for job in fresh:
                        self.celery.send_task(keys.TASK_NAME, args=[job], task_id=job["job_id"], producer=producer,
                                              queue=keys.job_queue(self.settings, job), ignore_result=True,
                                              headers={keys.RECORDED_HEADER: 1}, event_dispatcher=events,
                                              compression=MESSAGE_COMPRESSION)
                events.flush()
        except Exception:
            # Publishing failed, wholly or part-way: drop the new records so that a retry with the same job_id
            # publishes again instead of finding a record no message will complete. A message that did go
            # out finds no record and is skipped by the worker; the retried one does the work.
            self.jobs.forget(fresh)
            raise

    def enqueue(self, jobs: list[dict[str, Any]], notify: str | None = None) -> None:
        """Enqueue jobs already validated (``parse_job(...).wire()`` with a ``job_id`` each); an id that has a
        record is not sent again. ``notify``: a Redis list each job's record key is pushed onto as it ends."""
        for start in range(0, len(jobs), CHUNK):
            self._enqueue(jobs[start:start + CHUNK], notify)

    # batches -------------------------------------------------------------------------------------------
    def submit_batch(self, input: str, output: str, batch_id: str | None = None, priority: str = "low",
                     model: str | None = None, completion_window_s: float | None = None,
                     callback_url: str | None = None, npy: bool = False) -> BatchRecord:
        """Run a JSONL file of jobs server-side (``s3://…`` or a local file, uploaded first) into
        ``output`` (``s3://bucket/prefix/``); returns the batch record. The id is ``batch_id`` or derived from
        the input's URI and ETag: submitting it again adds nothing (``rerankq.client.batch_submit``). ``npy``:
        embedding lines' vectors also as one ``.npy`` per results part, with an index."""
        return submit_batch(self, input, output, batch_id, priority, model, completion_window_s, callback_url, npy)

    def batch(self, batch_id: str) -> BatchRecord:
        """A batch's record (state, counts, timestamps); ``NoSuchJob`` for an unknown id."""
        if self.sharded is not None:
            return self.sharded.batch(batch_id, lambda store: store.get(batch_id))  # type: ignore[no-any-return]
        return BatchStore(self.settings, self.redis).get(batch_id)

    def batches(self, limit: int = 20) -> list[BatchRecord]:
        """The newest batches first."""
        if self.sharded is not None:
            return self.sharded.batches(limit)
        return BatchStore(self.settings, self.redis).list(limit)

    def cancel_batch(self, batch_id: str) -> str:
        """Cancel a batch: jobs in flight are cancelled, finished results are kept; returns its state before."""
        if self.sharded is not None:
            return str(self.sharded.batch(batch_id, lambda store: store.cancel(batch_id)))
        return BatchStore(self.settings, self.redis).cancel(batch_id)

    def wait_batch(self, batch_id: str, timeout: float | None = None,
                   progress: Callable[[BatchRecord], None] | None = None, interval: float = 1.0) -> BatchRecord:
        """Wait until a batch ends; ``progress(record)`` is called after every read (every ``interval`` s)."""
        return wait_batch(self, batch_id, timeout, progress, interval)

    # reading -------------------------------------------------------------------------------------
    def status(self, job_id: str) -> dict[str, Any]:
        """``{"job_id", "state", "progress", "created_at", "started_at", "finished_at", "worker", "error"}``;
        ``NoSuchJob`` for an unknown (or expired) id."""
        return self.jobs.status(job_id)

    def statuses(self, job_ids: Iterable[str]) -> list[dict[str, Any] | None]:
        """The statuses of many jobs in one round trip, in order; ``None`` for an unknown (or expired) id."""
        return [record.status() if record else None for record in self.jobs.records(list(job_ids))]

    def result(self, job_id: str, timeout: float | None = None) -> dict[str, Any]:
        """The result of a succeeded job. Like Celery's ``AsyncResult.get()``, waits for a queued or running
        job: forever by default (``timeout=None``), at most ``timeout`` seconds otherwise; ``timeout=0``
        does not wait. Raises ``TimeoutError`` when the job is still unfinished then, ``JobFailed`` for a
        failed or cancelled job, ``NoSuchJob`` for an unknown id."""
        if self.completions.mine(job_id) and timeout != 0:
            for _, outcome in self._completed([job_id], timeout, lambda n: None):
                if isinstance(outcome, Exception):
                    raise outcome
                return outcome
        record = self.jobs.record(job_id)
        if record.state not in TERMINAL and timeout != 0:
            self.wait_any([job_id], timeout)
            record = self.jobs.record(job_id)
        return self.result_of(record)

    def result_of(self, record: JobRecord) -> dict[str, Any]:
        """The result of a record read already (``JobFailed`` unless it succeeded; ``TimeoutError`` while it
        runs)."""
        if record.state not in TERMINAL:
            raise TimeoutError(f"job {record.job_id} is still {record.state}")
        if record.state != JobState.SUCCEEDED:
            raise JobFailed(record.job_id, record.state, record.error)
        if record.result_uri:
            return self.results.get(record.result_uri)
        result: dict[str, Any] = json.loads(record.result or "{}")
        return result

    def wait_any(self, job_ids: list[str], timeout: float | None, watched: bool = False) -> str | None:
        """Block until one of ``job_ids`` is terminal; returns its id (None on timeout).

        Marks the jobs watched (their ends push a done token; ``watched``: the caller did, reading their states)
        and blocks on their done tokens in slices shorter than the Redis client's socket timeout. The token
        is put back so that other waiters on the same job wake too; between slices the states are read
        once, so a waiter whose token another client took still returns."""
        if self.sharded is not None:
            return self.sharded.wait_any(job_ids, timeout, watched)
        deadline = None if timeout is None else time.monotonic() + timeout
        if not watched:
            ended = [j for j, s in zip(job_ids, self.jobs.states(job_ids, watch=True), strict=True)
                     if s is None or s in TERMINAL]
            if ended:
                return ended[0]
        done_keys = [self.jobs.done(j) for j in job_ids]
        while True:
            left = WAIT_SLICE_S if deadline is None else min(WAIT_SLICE_S, deadline - time.monotonic())
            if left <= 0:
                return None
            popped = self.redis.blpop(done_keys, timeout=max(left, 0.01))
            if popped is not None:
                break
            finished = [j for j, s in zip(job_ids, self.jobs.states(job_ids, watch=True), strict=True)
                        if s is None or s in TERMINAL]
            if finished:
                return finished[0]
        key = popped[0].decode() if isinstance(popped[0], bytes) else str(popped[0])
        self.redis.rpush(key, b"1")
        self.redis.expire(key, self.settings.results.ttl_s)
        return key.removeprefix(f"{self.settings.queue_prefix}:job:").removesuffix(":done")

    def cancel(self, job_id: str) -> str:
        """Cancel a queued or running job; returns the state it was in (``queued``, ``running``, or
        ``cancelled`` when it was cancelled before). Workers skip cancelled jobs, and a running job's result is
        never written once it is cancelled: its worker's commit and its final write both refuse a cancelled job.

        When cancel can no longer stop a job: once a worker has committed the job's result (state ``finishing``:
        its scores are computed and being written to the record or S3) or the job has ended (``succeeded``,
        ``failed``, ``expired``), the job keeps its course and this raises ``CancelTooLate``, whose ``state``
        says which; a ``finishing`` job then ends ``succeeded``. ``NoSuchJob`` for an unknown id."""
        before = self.jobs.cancel(job_id)
        if before in (JobState.QUEUED, JobState.RUNNING, JobState.CANCELLED):
            return before
        raise CancelTooLate(job_id, before)

    def as_completed(self, job_ids: Iterable[str], timeout: float | None = None,
                     progress: bool | Callable[[int, int], None] = False
                     ) -> Iterator[tuple[str, dict[str, Any] | Exception]]:
        """Yield ``(job_id, result)`` as jobs finish; for a failed, cancelled or unknown job the second
        item is the exception (``JobFailed`` / ``NoSuchJob``) instead. ``TimeoutError`` after ``timeout``.
        ``progress``: ``True`` shows a progress bar on stderr; a callable is called with ``(done, total)``
        after each job."""
        pending = list(dict.fromkeys(job_ids))
        total = len(pending)
        bar = Progress(total, "jobs", enabled=True) if progress is True else None
        report = progress if callable(progress) else (lambda d, t: bar.set(d) if bar else None)
        try:
            yield from self._completed(pending, timeout, lambda n: report(n, total))
        finally:
            if bar is not None:
                bar.close()

    def _completed(self, pending: list[str], timeout: float | None, report: Callable[[int], None]
                   ) -> Iterator[tuple[str, dict[str, Any] | Exception]]:
        """Jobs this client created are heard of on its notify list (``Completions``); others' states are read
        on each wake, as are everyone's after ``RECHECK_S`` without news."""
        deadline = None if timeout is None else time.monotonic() + timeout
        done, heard_at = 0, time.monotonic()
        others = [j for j in pending if not self.completions.mine(j)]
        check = list(others)
        while pending:
            finished = self.completions.take(pending)
            if check:
                states = self.jobs.states(check, watch=True)
                known = set(finished)
                finished += [j for j, s in zip(check, states, strict=True) if (s is None or s in TERMINAL)
                             and j not in known]
            for job_id, outcome in self._read_ended(finished):
                done += 1
                report(done)
                yield job_id, outcome
            ended = set(finished)
            pending = [j for j in pending if j not in ended]
            others = [j for j in others if j not in ended]
            if not pending:
                return
            left = deadline_left(deadline)
            if left is not None and left <= 0:
                raise TimeoutError(f"{len(pending)} jobs unfinished after {timeout} s")
            wait = min(WAIT_SLICE_S, left) if left is not None else WAIT_SLICE_S
            if others:  # some ends can only be read: wake on their done tokens, look at the list between
                self.wait_any(others[:256], min(wait, 1.0) if len(pending) > len(others) else wait,
                              watched=True)  # their states were read with watch= above
                heard = self.completions.listen(0.01) if len(pending) > len(others) else 0
            else:
                heard = self.completions.listen(wait)
            if heard:
                heard_at = time.monotonic()
            stale = time.monotonic() - heard_at > RECHECK_S
            check = pending if stale else others
            if stale:
                heard_at = time.monotonic()

    def _read_ended(self, job_ids: list[str]) -> list[tuple[str, dict[str, Any] | Exception]]:
        """The outcomes of ended jobs: as announced on the notify list, else their records in one round trip;
        results in S3 fetched."""
        out: list[tuple[str, dict[str, Any] | Exception]] = []
        records: dict[str, JobRecord | None] = {}
        for job_id in job_ids:  # what their ends announced on the notify list; the others' records are read
            records[job_id] = self.completions.outcome(job_id)
        unread = [j for j, r in records.items() if r is None]
        if unread:
            records.update(zip(unread, self.jobs.ended_records(unread), strict=True))
        for job_id in job_ids:
            record = records[job_id]
            self.completions.forget(job_id)
            try:
                if record is None:
                    raise NoSuchJob(job_id)
                out.append((job_id, self.result_of(record)))
            except (JobFailed, NoSuchJob) as exc:
                out.append((job_id, exc))
        return out
