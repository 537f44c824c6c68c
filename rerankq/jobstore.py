"""``JobStore``: reads and writes job records (``rerankq.jobs``), every transition one Lua script
(``rerankq.transitions``), optionally waited for by replicas (``WAIT``)."""

from __future__ import annotations

import json
import time
from typing import Any

import redis

from rerankq import keys
from rerankq.connections import redis_client
from rerankq.errors import NoSuchJob, TransientError
from rerankq.jobs import (
    JobRecord,
    JobState,
    Outcome,
    Started,
    deadline_of,
    flatten_fields,
    pack_job,
    public_state,
    text_of,
)
from rerankq.scripts import Scripts
from rerankq.settings import Settings
from rerankq.transitions import (
    CANCEL,
    COMMIT,
    CREATE,
    CREATE_SENT,
    FAIL,
    FINISH_MANY,
    OBSERVE,
    PROGRESS,
    REQUEUE,
    START_MANY,
)


class JobStore:
    """Reads and writes job records. Producers create, read and cancel; workers start, progress and finish."""

    def __init__(self, settings: Settings, client: redis.Redis | None = None) -> None:
        self.settings = settings
        self.redis = client if client is not None else redis_client(settings)
        self.scripts = Scripts(self.redis)
        register = self.scripts.register
        self._create, self._observe, self._start = register(CREATE), register(OBSERVE), register(START_MANY)
        self._progress, self._commit, self._finish = register(PROGRESS), register(COMMIT), register(FINISH_MANY)
        self._requeue, self._cancel, self._fail = register(REQUEUE), register(CANCEL), register(FAIL)
        self._create_sent = register(CREATE_SENT)

    def key(self, job_id: str) -> str:
        return keys.job_key(self.settings, job_id)

    def done(self, job_id: str) -> str:
        return keys.done_key(self.settings, job_id)

    def _keys(self, job_id: str) -> list[str]:
        return [self.key(job_id), self.done(job_id)]

    def _outbox(self) -> list[str]:
        """The callback outbox's keys, which the scripts that may end a job write to (``LIB``)."""
        return keys.callback_keys(self.settings)[:2]

    def _script_keys(self, job_id: str) -> list[str]:
        """The keys of the scripts that may end a job (``LIB``): its own, then the callback outbox's."""
        return [*self._keys(job_id), *keys.callback_keys(self.settings)[:2]]

    def _ttl(self, state: JobState) -> int:
        results = self.settings.results
        return results.ttl_s if state in (JobState.SUCCEEDED, JobState.CANCELLED) else results.failure_ttl_s

    def _execute(self, pipe: Any, undo: Any = None) -> list[Any]:
        """Run a pipeline; with ``redis_min_replicas`` set, wait until that many replicas have its writes, so
        that what a caller was told is written survives a failover (``WAIT``). When they do not, ``undo(out)``
        runs before the error is raised."""
        need = self.settings.redis_min_replicas
        if need:
            pipe.execute_command("WAIT", need, self.settings.redis_wait_ms)
        out = self.scripts.execute(pipe)
        if need:
            acked = out.pop()
            if int(acked) < need:
                if undo is not None:
                    undo(out)
                raise TransientError(f"Redis write reached {acked} of {need} replicas within "
                                     f"{self.settings.redis_wait_ms} ms (redis_min_replicas): not acknowledged")
        return list(out)

    # producer side -------------------------------------------------------------------------------
    def create_many(self, jobs: list[dict[str, Any]], now: float | None = None, task_id: str | None = None,
                    sent: bool = False, notify: str | None = None) -> list[bool]:
        """Create a queued record per job in one round trip; False where the ``job_id`` already exists.
        ``task_id``: the Celery message that creates it, when that is not the SDK's (see ``creator``).
        ``sent``: the caller publishes each new job's message next (the SDK): the record keeps the job's JSON
        and its id joins its queue's pending set, so that a message lost on its way (the producer dies before
        publishing, a worker dies as it takes it) is sent again (``rerankq.worker.reaper``). ``notify``: a list each
        job's final state and record key are pushed onto when it ends (a batch runner watches its jobs so)."""
        now = time.time() if now is None else now
        pipe = self.redis.pipeline(transaction=False)
        for job in jobs:
            units = len(job.get("documents") or job.get("inputs") or ())  # pairs to score, or inputs to embed
            fields = {"state": JobState.QUEUED.value, "created_at": now, "priority": job.get("priority", "normal"),
                      "model": job.get("model"), "pairs_total": units,
                      "deadline_at": deadline_of(job, now), "task_id": task_id,
                      "wire": pack_job(job) if sent else None, "notify": notify,
                      "callback_url": job.get("callback_url")}
            ttl = self.settings.results.failure_ttl_s
            if sent:
                self._create_sent(keys=[self.key(job["job_id"]), keys.pending_key(keys.job_queue(self.settings, job))],
                                  args=[ttl, now, job["job_id"], *flatten_fields(fields)], client=pipe)
            else:
                self._create(keys=[self.key(job["job_id"])], args=[ttl, *flatten_fields(fields)], client=pipe)

        def undo(out: list[Any]) -> None:
            # Not acknowledged: the caller publishes nothing and will retry with the same ids, which must find
            # no record (a record without a message would stay queued for good).
            self.forget([job for job, new in zip(jobs, out, strict=True) if new])

        out = self._execute(pipe, undo)
        return [bool(x) for x in out]

    def forget(self, jobs: list[dict[str, Any]]) -> None:
        """Delete new records whose messages were not published (and their pending entries)."""
        if not jobs:
            return
        pipe = self.redis.pipeline(transaction=False)
        for job in jobs:
            pipe.delete(*self._keys(job["job_id"]))
            pipe.zrem(keys.pending_key(keys.job_queue(self.settings, job)), job["job_id"])
        self.scripts.execute(pipe)

    def creator(self, job_id: str) -> str | None:
        """The Celery task id of the message that created the record (None: the SDK did, or no record)."""
        value = self.redis.hget(self.key(job_id), "task_id")
        return None if value is None else text_of(value)

    def fail_new(self, job_id: str, error: str, priority: str = "normal") -> bool:
        """A record that starts and ends ``failed`` (an invalid message from a producer that made no record).
        False when the id exists already (its record is left as it is)."""
        now = time.time()
        fields = {"state": JobState.FAILED.value, "created_at": now, "finished_at": now, "priority": priority,
                  "pairs_total": 0, "pairs_done": 0, "error": error, "ends": 1}
        pipe = self.redis.pipeline(transaction=False)
        self._create(keys=[self.key(job_id)], args=[self.settings.results.failure_ttl_s, *flatten_fields(fields)],
                     client=pipe)
        return bool(self._execute(pipe)[0])

    def fail_queued(self, job_id: str, error: str) -> str | None:
        """End a queued job ``failed`` with ``error`` (its message was invalid: it can never run), waking its
        waiters and writing its callback event. Returns the state before (None when there is no record); a job
        in any other state is left as it is."""
        state = self._fail(keys=self._script_keys(job_id),
                           args=[time.time(), self.settings.results.failure_ttl_s, error])
        return None if state is None else text_of(state)

    def cancel(self, job_id: str) -> str:
        """Cancel a queued or running job; returns the state it had, ``finishing`` included. Terminal and
        finishing jobs are left as they are (a finishing job is writing its result: it ends succeeded)."""
        state = self._cancel(keys=[*self._script_keys(job_id), keys.cancels_key(self.settings)],
                             args=[time.time(), self.settings.results.ttl_s])
        if state is None:
            raise NoSuchJob(job_id)
        return text_of(state)

    def delete(self, job_id: str) -> None:
        self.redis.delete(*self._keys(job_id))

    # reading -------------------------------------------------------------------------------------
    def record(self, job_id: str) -> JobRecord:
        """The record (a queued job past its deadline is expired first); ``NoSuchJob`` if unknown."""
        pipe = self.redis.pipeline(transaction=False)
        self._observe(keys=self._script_keys(job_id), args=[time.time(), self.settings.results.failure_ttl_s, 0],
                      client=pipe)
        pipe.hgetall(self.key(job_id))
        raw = self.scripts.execute(pipe)[1]
        if not raw:
            raise NoSuchJob(job_id)
        return JobRecord.from_hash(job_id, raw)

    def status(self, job_id: str) -> dict[str, Any]:
        """The job's status (``JobRecord.status``); ``NoSuchJob`` for an unknown id, never ``queued``."""
        return self.record(job_id).status()

    def records(self, job_ids: list[str]) -> list[JobRecord | None]:
        """Many records in one round trip, deadlines applied as in ``record``; None for an unknown id."""
        pipe = self.redis.pipeline(transaction=False)
        now, ttl = time.time(), self.settings.results.failure_ttl_s
        for job_id in job_ids:
            self._observe(keys=self._script_keys(job_id), args=[now, ttl, 0], client=pipe)
            pipe.hgetall(self.key(job_id))
        raws = self.scripts.execute(pipe)[1::2]
        return [JobRecord.from_hash(j, raw) if raw else None for j, raw in zip(job_ids, raws, strict=True)]

    def ended_records(self, job_ids: list[str]) -> list[JobRecord | None]:
        """Records of jobs known to have ended, as stored (an ended record no longer changes: no deadline to
        apply), one ``HGETALL`` each in one round trip; None for a record gone (expired)."""
        pipe = self.redis.pipeline(transaction=False)
        for job_id in job_ids:
            pipe.hgetall(self.key(job_id))
        return [JobRecord.from_hash(j, raw) if raw else None for j, raw in zip(job_ids, pipe.execute(), strict=True)]

    def states(self, job_ids: list[str], watch: bool = False) -> list[JobState | None]:
        """Public states of many jobs in one round trip (None for unknown ids), deadlines applied. ``watch``: the
        caller will block on the done lists (``done``) of those not ended: their ends push a token there (a job
        nobody watches gets no done list; its creator hears of it on its notify list)."""
        pipe = self.redis.pipeline(transaction=False)
        now, ttl = time.time(), self.settings.results.failure_ttl_s
        for job_id in job_ids:
            self._observe(keys=self._script_keys(job_id), args=[now, ttl, int(watch)], client=pipe)
        return [public_state(s) for s in self.scripts.execute(pipe)]

    # worker side ---------------------------------------------------------------------------------
    def start_many(self, starts: list[tuple[str, int, bool]], worker: str) -> list[Started]:
        """Take jobs (``(job_id, pairs_total, solo)`` each) for this worker: one script call for them all."""
        if not starts:
            return []
        now, ttl = time.time(), self.settings.results.failure_ttl_s
        job_keys = [k for job_id, _, _ in starts for k in self._keys(job_id)]
        args: list[Any] = [worker, now, ttl, self.settings.max_deliveries]
        for _, total, solo in starts:
            args += [total, int(solo)]
        out: list[Started] = []
        for found in self._start(keys=[*self._outbox(), *job_keys], args=args):
            if not found:
                out.append(Started(None, now))
                continue
            state = public_state(found[0])
            created, fence, died, ended = float(found[1] or now), int(found[2]), int(found[3]), int(found[4])
            out.append(Started(state, created, fence, bool(died), bool(ended)))
        return out

    def add_progress(self, done: dict[tuple[str, int], int]) -> None:
        """Add finished pairs to each job's ``pairs_done``; keys are (job_id, fence)."""
        if not done:
            return
        pipe = self.redis.pipeline(transaction=False)
        for (job_id, fence), n in done.items():
            self._progress(keys=[self.key(job_id)], args=[fence, n], client=pipe)
        self.scripts.execute(pipe)

    def commit_many(self, attempts: list[tuple[str, int]]) -> list[str | None]:
        """Claim the right to write each result: ``finishing`` where granted, else what stops it (``cancelled``,
        ``stale`` for an attempt that no longer holds the job, a terminal state, None when gone)."""
        pipe = self.redis.pipeline(transaction=False)
        for job_id, fence in attempts:
            self._commit(keys=[self.key(job_id)], args=[fence], client=pipe)
        return [None if s is None else text_of(s) for s in self.scripts.execute(pipe)]

    def finish_many(self, outcomes: list[Outcome]) -> list[str | None]:
        """Write terminal states, one script call for them all; each returns the state written, or what refused
        it (``stale``, the terminal state already there, None when the record is gone). Never reopens or
        rewrites a finished job."""
        if not outcomes:
            return []
        now = time.time()
        args: list[Any] = []
        for o in outcomes:
            fields = flatten_fields({"finished_at": now, **o.fields})
            read = {k: o.fields[k] for k in ("result", "result_uri", "error") if o.fields.get(k) is not None}
            args += [o.fence, o.state.value, self._ttl(o.state), json.dumps(read, separators=(",", ":")), len(fields),
                     *fields]
        pipe = self.redis.pipeline(transaction=False)
        self._finish(keys=[*self._outbox(), *(k for o in outcomes for k in self._keys(o.job_id))], args=args,
                     client=pipe)
        return [None if s == 0 else text_of(s) for s in self._execute(pipe)[0]]

    def peek_many(self, job_ids: list[str]) -> list[JobState | None]:
        """Public states as stored (no deadline check: for jobs a worker runs), one HGET each, one round trip."""
        pipe = self.redis.pipeline(transaction=False)
        for job_id in job_ids:
            pipe.hget(self.key(job_id), "state")
        return [public_state(s) for s in pipe.execute()]

    def cancels(self) -> int:
        """How many jobs were ever cancelled (on this Redis, under this prefix): while it stays put, no job a
        worker runs was cancelled (one GET instead of one per job)."""
        return int(self.redis.get(keys.cancels_key(self.settings)) or 0)

    def peek(self, job_id: str) -> JobState | None:
        """The public state, as stored (no deadline check): one HGET."""
        return public_state(self.redis.hget(self.key(job_id), "state"))

    def requeue(self, job_id: str, fence: int, reason: str) -> int:
        """Back to queued after a transient failure; returns the job's retry count (0 = refused: stale)."""
        return int(self._requeue(keys=[self.key(job_id)], args=[fence, reason]))


