"""The job record: our own state in Redis, separate from Celery's (which calls every unknown id PENDING).

One hash per job (``rerankq.keys.job_key``) with the fields of SPEC §3's status plus the result (inline
JSON, or ``result_uri`` pointing at S3). Every transition is a small Lua script so that it is atomic and
one round trip: a cancelled job is never set running or succeeded afterwards, and a redelivered job simply
overwrites its own earlier result. Terminal states push one token on ``done_key`` so waiters can ``BLPOP``
instead of polling.

Lifetimes: a record lives ``results.ttl_s`` after it succeeds or is cancelled, ``results.failure_ttl_s``
after it fails; while queued or running it lives ``results.failure_ttl_s`` (longer than any queue wait).
"""

from __future__ import annotations

import json
import time
from enum import StrEnum
from typing import Any

import redis

from rerankq import keys
from rerankq.errors import NoSuchJob
from rerankq.settings import Settings


class JobState(StrEnum):
    """Where a job is in its life."""

    QUEUED = "queued"
    """Accepted and waiting in a queue."""
    RUNNING = "running"
    """Taken by a worker; its pairs are being scored."""
    SUCCEEDED = "succeeded"
    """Scored; the result is readable."""
    FAILED = "failed"
    """Ended without a result: invalid request, unreadable query, every document failed."""
    CANCELLED = "cancelled"
    """Cancelled by a client before it finished; workers skip it."""

    @property
    def terminal(self) -> bool:
        return self in (JobState.SUCCEEDED, JobState.FAILED, JobState.CANCELLED)


TERMINAL = tuple(state.value for state in JobState if state.terminal)

# KEYS[1] record; ARGV: ttl, then field/value pairs. Returns 1 when created, 0 when the id exists.
_CREATE = """
if redis.call('EXISTS', KEYS[1]) == 1 then return 0 end
redis.call('HSET', KEYS[1], unpack(ARGV, 2))
redis.call('EXPIRE', KEYS[1], ARGV[1])
return 1
"""

# KEYS[1] record; ARGV: worker, now, pairs_total. Returns {state now (running unless it was cancelled),
# created_at}; false when the record is gone.
_START = """
local state = redis.call('HGET', KEYS[1], 'state')
if not state then return false end
local created = redis.call('HGET', KEYS[1], 'created_at')
if state == 'cancelled' then return {state, created} end
redis.call('HDEL', KEYS[1], 'error')
redis.call('HSET', KEYS[1], 'state', 'running', 'worker', ARGV[1], 'started_at', ARGV[2],
           'pairs_total', ARGV[3], 'pairs_done', 0)
return {'running', created}
"""

# KEYS[1] record, KEYS[2] done list; ARGV: state, ttl, then field/value pairs. Never overwrites a cancel.
_FINISH = """
local state = redis.call('HGET', KEYS[1], 'state')
if not state then return false end
if state == 'cancelled' then return state end
redis.call('HDEL', KEYS[1], 'result', 'result_uri', 'error')
redis.call('HSET', KEYS[1], 'state', ARGV[1], unpack(ARGV, 3))
redis.call('EXPIRE', KEYS[1], ARGV[2])
redis.call('DEL', KEYS[2])
redis.call('RPUSH', KEYS[2], '1')
redis.call('EXPIRE', KEYS[2], ARGV[2])
return ARGV[1]
"""

# KEYS[1] record; ARGV[1] pairs newly done. A record that is gone stays gone (no stray hash without a TTL).
_PROGRESS = """
if redis.call('EXISTS', KEYS[1]) == 1 then redis.call('HINCRBY', KEYS[1], 'pairs_done', ARGV[1]) end
"""

# KEYS[1] record, KEYS[2] done list; ARGV: now, ttl. Returns the state before the call.
_CANCEL = """
local state = redis.call('HGET', KEYS[1], 'state')
if not state then return false end
if state == 'queued' or state == 'running' then
  redis.call('HSET', KEYS[1], 'state', 'cancelled', 'finished_at', ARGV[1])
  redis.call('EXPIRE', KEYS[1], ARGV[2])
  redis.call('DEL', KEYS[2])
  redis.call('RPUSH', KEYS[2], '1')
  redis.call('EXPIRE', KEYS[2], ARGV[2])
end
return state
"""

_FLOATS = ("created_at", "started_at", "finished_at")
_INTS = ("pairs_done", "pairs_total")


def _text(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else value


def _flatten(fields: dict[str, Any]) -> list[Any]:
    return [x for k, v in fields.items() if v is not None for x in (k, v)]


class JobStore:
    """Reads and writes job records. Producers create and cancel; workers start, progress and finish."""

    def __init__(self, settings: Settings, client: redis.Redis | None = None) -> None:
        self.settings = settings
        self.redis = client or redis.Redis.from_url(settings.redis_url)
        self._create = self.redis.register_script(_CREATE)
        self._start = self.redis.register_script(_START)
        self._finish = self.redis.register_script(_FINISH)
        self._cancel = self.redis.register_script(_CANCEL)
        self._progress = self.redis.register_script(_PROGRESS)

    def key(self, job_id: str) -> str:
        return keys.job_key(self.settings, job_id)

    def done(self, job_id: str) -> str:
        return keys.done_key(self.settings, job_id)

    # producer side -------------------------------------------------------------------------------
    def create_many(self, jobs: list[dict[str, Any]]) -> list[bool]:
        """Create a queued record per job in one round trip; False where the ``job_id`` already exists."""
        now = time.time()
        ttl = self.settings.results.failure_ttl_s
        pipe = self.redis.pipeline(transaction=False)
        for job in jobs:
            fields = {"state": "queued", "created_at": now, "priority": job.get("priority", "normal"),
                      "pairs_total": len(job["documents"]), "pairs_done": 0}
            self._create(keys=[self.key(job["job_id"])], args=[ttl, *_flatten(fields)], client=pipe)
        return [bool(x) for x in pipe.execute()]

    def cancel(self, job_id: str) -> str:
        """Cancel a queued or running job; returns the state it had. Terminal jobs are left as they are."""
        state = self._cancel(keys=[self.key(job_id), self.done(job_id)],
                             args=[time.time(), self.settings.results.ttl_s])
        if state is None:
            raise NoSuchJob(job_id)
        return state.decode() if isinstance(state, bytes) else str(state)

    def delete(self, job_id: str) -> None:
        self.redis.delete(self.key(job_id), self.done(job_id))

    # reading -------------------------------------------------------------------------------------
    def record(self, job_id: str) -> dict[str, Any]:
        """The raw record (with ``result`` / ``result_uri``), decoded; ``NoSuchJob`` if unknown."""
        raw = self.redis.hgetall(self.key(job_id))
        if not raw:
            raise NoSuchJob(job_id)
        return {_text(k): _text(v) for k, v in raw.items()}

    def status(self, job_id: str) -> dict[str, Any]:
        """SPEC §3 status."""
        return to_status(job_id, self.record(job_id))

    def states(self, job_ids: list[str]) -> list[str | None]:
        """States of many jobs in one round trip (None for unknown ids)."""
        pipe = self.redis.pipeline(transaction=False)
        for job_id in job_ids:
            pipe.hget(self.key(job_id), "state")
        return [s.decode() if s else None for s in pipe.execute()]

    # worker side ---------------------------------------------------------------------------------
    def start_many(self, job_ids: list[str], worker: str, pairs: list[int]) -> list[tuple[str | None, float]]:
        """Mark jobs running (one round trip); returns each job's (state, created_at): state is running,
        cancelled, or None when the record is gone."""
        pipe = self.redis.pipeline(transaction=False)
        now = time.time()
        for job_id, total in zip(job_ids, pairs, strict=True):
            self._start(keys=[self.key(job_id)], args=[worker, now, total], client=pipe)
        out: list[tuple[str | None, float]] = []
        for found in pipe.execute():
            if not found:
                out.append((None, now))
            else:
                out.append((found[0].decode(), float(found[1] or now)))
        return out

    def add_progress(self, done: dict[str, int]) -> None:
        """Add finished pairs to each job's ``pairs_done`` (one round trip)."""
        if not done:
            return
        pipe = self.redis.pipeline(transaction=False)
        for job_id, n in done.items():
            self._progress(keys=[self.key(job_id)], args=[n], client=pipe)
        pipe.execute()

    def finish_many(self, outcomes: list[tuple[str, str, dict[str, Any]]]) -> list[str | None]:
        """Write terminal states: (job_id, state, fields) each; fields like result/result_uri/error.

        Idempotent: a redelivered job overwrites its earlier result. A cancelled job stays cancelled.
        """
        pipe = self.redis.pipeline(transaction=False)
        now = time.time()
        for job_id, state, fields in outcomes:
            ttl = self.settings.results.failure_ttl_s if state == "failed" else self.settings.results.ttl_s
            payload = {"finished_at": now, **fields}
            self._finish(keys=[self.key(job_id), self.done(job_id)], args=[state, ttl, *_flatten(payload)],
                         client=pipe)
        return [s.decode() if isinstance(s, bytes) else s for s in pipe.execute()]


def to_status(job_id: str, record: dict[str, Any]) -> dict[str, Any]:
    """A raw record → SPEC §3 status."""
    status: dict[str, Any] = {"job_id": job_id, "state": record.get("state")}
    status["progress"] = {k: int(record.get(k) or 0) for k in _INTS}
    for k in _FLOATS:
        status[k] = float(record[k]) if record.get(k) else None
    status["worker"] = record.get("worker")
    status["error"] = record.get("error")
    return status


def result_fields(result: dict[str, Any], uri: str | None) -> dict[str, Any]:
    """The record fields that hold a result: inline JSON, or the S3 pointer."""
    return {"result_uri": uri} if uri else {"result": json.dumps(result, separators=(",", ":"))}
