"""The job record: its states, its fields and every transition, in one place.

One Redis hash per job (``rerankq.keys.job_key``), separate from Celery's own keys (Celery calls every unknown
id PENDING; we say "no such job"). Each transition is one Lua script, atomic and one round trip:

    queued ──start──▶ running ──commit──▶ finishing ──finish──▶ succeeded | failed
       │                 │  └──requeue (transient failure)──▶ queued
       ├──cancel─────────┴──▶ cancelled
       └──deadline passed (on start, or when anyone reads it)──▶ expired

- ``finishing`` is internal (it reads as ``running``): the worker holds the right to write the result. Cancel
  refuses it, so once ``cancel`` returns nothing writes the job's result anywhere, Redis or S3.
- Every start takes a new ``fence`` (attempt number). Progress, commit, finish and requeue carry the fence of
  the attempt that does them and are refused for any other: a worker presumed dead that wakes up (SIGSTOP,
  then SIGCONT) can neither overwrite a result nor count progress twice. A terminal job is never reopened.
- A start that finds the job ``running`` or ``finishing`` knows its previous holder died; such a job runs
  alone, and its ``solo`` count is what ``max_deliveries`` caps (poison jobs end ``failed``, innocents that
  shared a round with one are not charged).
- Terminal states push one token on ``done_key`` so that waiters ``BLPOP`` instead of polling, and count
  themselves in the record's ``ends`` field: exactly 1 for every ended job (the chaos tests read it). A record
  with a ``notify`` list also gets ``STATE RECORD-KEY`` pushed there (a batch runner's one list for all its jobs).
- A job with a ``callback_url`` gets its completion event in the callback outbox from the same script that ends
  it, whichever that is (finish, cancel, expiry, poison): no ended job lacks its event (``rerankq.callbacks``).

Lifetimes: ``results.ttl_s`` after success or cancel, ``results.failure_ttl_s`` after failure or expiry and
while the job is live (longer than any queue wait).
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any

import redis

from rerankq import keys
from rerankq.connections import redis_client
from rerankq.errors import NoSuchJob, TransientError
from rerankq.settings import Settings


class JobState(StrEnum):
    """Where a job is in its life (SPEC §3, plus ``expired``)."""

    QUEUED = "queued"
    """Accepted and waiting in a queue (also: waiting to be retried after a transient failure)."""
    RUNNING = "running"
    """A worker is preparing or scoring it."""
    SUCCEEDED = "succeeded"
    """Scored; the result is readable."""
    FAILED = "failed"
    """Ended without a result: invalid request, unreadable query, every document failed, poison."""
    CANCELLED = "cancelled"
    """Cancelled by a client before it finished; nothing writes its result afterwards."""
    EXPIRED = "expired"
    """Its deadline passed before it started; never scored."""

    @property
    def terminal(self) -> bool:
        return self in (JobState.SUCCEEDED, JobState.FAILED, JobState.CANCELLED, JobState.EXPIRED)


TERMINAL = frozenset(s for s in JobState if s.terminal)


def as_state(text: str | None) -> JobState | None:
    """A state from a script's answer; None for anything else (``stale``, a missing record)."""
    return JobState(text) if text in _STATES else None


_STATES = frozenset(s.value for s in JobState)
FINISHING = "finishing"  # internal: a worker is writing the result; public reads say running


@dataclass
class JobRecord:
    """The fields of a job's hash, typed. ``from_hash`` reads what Redis returns; ``state`` is public."""

    job_id: str
    state: JobState
    created_at: float
    priority: str = "normal"
    model: str | None = None
    pairs_total: int = 0
    pairs_done: int = 0
    started_at: float | None = None
    finished_at: float | None = None
    worker: str | None = None
    error: str | None = None
    result: str | None = None  # inline result JSON
    result_uri: str | None = None  # or where it lies in S3
    deadline_at: float | None = None
    deliveries: int = 0
    fence: int = 0
    extra: dict[str, str] = field(default_factory=dict)

    @classmethod
    def from_hash(cls, job_id: str, raw: dict[bytes, bytes] | dict[str, str]) -> JobRecord:
        data = {_text(k): _text(v) for k, v in raw.items()}

        def num(name: str) -> float | None:
            value = data.pop(name, "")
            return float(value) if value else None

        def text(name: str) -> str | None:
            return data.pop(name, None)

        state = data.pop("state", JobState.QUEUED.value)
        return cls(job_id=job_id, state=JobState(JobState.RUNNING if state == FINISHING else state),
                   created_at=num("created_at") or 0.0, priority=text("priority") or "normal", model=text("model"),
                   pairs_total=int(num("pairs_total") or 0), pairs_done=int(num("pairs_done") or 0),
                   started_at=num("started_at"), finished_at=num("finished_at"), worker=text("worker"),
                   error=text("error"), result=text("result"), result_uri=text("result_uri"),
                   deadline_at=num("deadline_at"), deliveries=int(num("deliveries") or 0),
                   fence=int(num("fence") or 0), extra=data)

    def status(self) -> dict[str, Any]:
        """SPEC §3 status."""
        return {"job_id": self.job_id, "state": self.state.value,
                "progress": {"pairs_done": self.pairs_done, "pairs_total": self.pairs_total},
                "created_at": self.created_at, "started_at": self.started_at, "finished_at": self.finished_at,
                "worker": self.worker, "error": self.error}


@dataclass(frozen=True)
class Started:
    """What ``start`` found. ``state`` is ``running`` when this attempt holds the job (with its ``fence``);
    otherwise the job is not to be run: terminal, expired now, gone (None), or failed as poison."""

    state: JobState | None
    created_at: float = 0.0
    fence: int = 0
    died_before: bool = False  # the previous holder died: run alone
    ended_now: bool = False  # this start ended the job (expired, or failed as poison)


def _text(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else value


def _flatten(fields: dict[str, Any]) -> list[Any]:
    return [x for k, v in fields.items() if v is not None for x in (k, v)]


# Shared Lua: KEYS[1] record, KEYS[2] done list, KEYS[3] and KEYS[4] the callback outbox's due zset and events
# hash. ``finish_with`` writes a terminal state, wakes waiters and, for a job with a ``callback_url``, writes its
# event to the outbox in the same script (``rerankq.callbacks`` reads it: a snapshot of the ended record).
_LIB = """
local function job_event(state)
  local url = redis.call('HGET', KEYS[1], 'callback_url')
  if not url then return end
  local flat, record = redis.call('HGETALL', KEYS[1]), {}
  for i = 1, #flat, 2 do record[flat[i]] = flat[i + 1] end
  local at = record['finished_at'] or '0'
  local id = 'evt_' .. string.sub(redis.sha1hex(KEYS[1] .. '|' .. (record['created_at'] or '') .. '|' .. at), 1, 32)
  redis.call('HSET', KEYS[4], id, cjson.encode({id = id, url = url, type = 'job.' .. state, created_at = at,
                                                key = KEYS[1], job = record}))
  redis.call('ZADD', KEYS[3], tonumber(at), id)
end
local function finish_with(state, ttl, ...)
  redis.call('HDEL', KEYS[1], 'result', 'result_uri', 'error', 'wire')
  redis.call('HSET', KEYS[1], 'state', state, ...)
  redis.call('HINCRBY', KEYS[1], 'ends', 1)
  job_event(state)
  redis.call('EXPIRE', KEYS[1], ttl)
  redis.call('DEL', KEYS[2])
  redis.call('RPUSH', KEYS[2], '1')
  redis.call('EXPIRE', KEYS[2], ttl)
  local notify = redis.call('HGET', KEYS[1], 'notify')
  if notify then redis.call('RPUSH', notify, state .. ' ' .. KEYS[1]) end
end
local function expire_if_due(state, now, ttl)
  if state ~= 'queued' then return false end
  local deadline = tonumber(redis.call('HGET', KEYS[1], 'deadline_at') or '')
  if deadline and now > deadline then
    finish_with('expired', ttl, 'finished_at', now, 'error', 'deadline passed before it started')
    return true
  end
  return false
end
"""

# ARGV: ttl, then field/value pairs. 1 when created, 0 when the id exists.
_CREATE = """
if redis.call('EXISTS', KEYS[1]) == 1 then return 0 end
redis.call('HSET', KEYS[1], unpack(ARGV, 2))
redis.call('EXPIRE', KEYS[1], ARGV[1])
return 1
"""

# ARGV: now, failure ttl. The state after an expiry check (nil when gone).
_OBSERVE = _LIB + """
local state = redis.call('HGET', KEYS[1], 'state')
if not state then return false end
if expire_if_due(state, tonumber(ARGV[1]), ARGV[2]) then return 'expired' end
return state
"""

# ARGV: worker, now, pairs_total, failure ttl, max solo attempts, solo (1 = this attempt runs alone).
# Returns {state, created_at, fence, died_before, changed}: changed = 1 when this call ended the job.
_START = _LIB + """
local state = redis.call('HGET', KEYS[1], 'state')
if not state then return false end
local now, ttl = tonumber(ARGV[2]), ARGV[4]
local created = redis.call('HGET', KEYS[1], 'created_at') or ARGV[2]
if state ~= 'queued' and state ~= 'running' and state ~= 'finishing' then return {state, created, 0, 0, 0} end
local died = 0
if state ~= 'queued' then died = 1 end
local deadline = tonumber(redis.call('HGET', KEYS[1], 'deadline_at') or '')
if deadline and now > deadline then
  finish_with('expired', ttl, 'finished_at', now, 'error', 'deadline passed before it started')
  return {'expired', created, 0, died, 1}
end
local deliveries = redis.call('HINCRBY', KEYS[1], 'deliveries', 1)
local solo = tonumber(redis.call('HGET', KEYS[1], 'solo') or '0')
if died == 1 and solo >= tonumber(ARGV[5]) then
  local last = redis.call('HGET', KEYS[1], 'worker') or '?'
  finish_with('failed', ttl, 'finished_at', now, 'error', 'delivered ' .. (deliveries - 1) ..
              ' times; each time the worker died: last on ' .. last)
  return {'failed', created, 0, died, 1}
end
if ARGV[6] == '1' then redis.call('HINCRBY', KEYS[1], 'solo', 1) end
local fence = redis.call('HINCRBY', KEYS[1], 'fence', 1)
redis.call('HDEL', KEYS[1], 'error')
redis.call('HSET', KEYS[1], 'state', 'running', 'worker', ARGV[1], 'started_at', ARGV[2],
           'pairs_total', ARGV[3], 'pairs_done', 0)
return {'running', created, fence, died, 0}
"""

# ARGV: fence, pairs newly done. Only the attempt holding the job counts.
_PROGRESS = """
if redis.call('HGET', KEYS[1], 'fence') == ARGV[1] and redis.call('HGET', KEYS[1], 'state') == 'running' then
  redis.call('HINCRBY', KEYS[1], 'pairs_done', ARGV[2])
end
"""

# ARGV: fence. 'finishing' when this attempt may now write the result; otherwise the state that stops it.
_COMMIT = """
local state = redis.call('HGET', KEYS[1], 'state')
if not state then return false end
if redis.call('HGET', KEYS[1], 'fence') ~= ARGV[1] then return 'stale' end
if state == 'running' then redis.call('HSET', KEYS[1], 'state', 'finishing') return 'finishing' end
return state
"""

# ARGV: fence, state, ttl, field/value pairs. The state written, or 'stale' / the state that refused it.
_FINISH = _LIB + """
local state = redis.call('HGET', KEYS[1], 'state')
if not state then return false end
if redis.call('HGET', KEYS[1], 'fence') ~= ARGV[1] then return 'stale' end
if state ~= 'running' and state ~= 'finishing' then return state end
finish_with(ARGV[2], ARGV[3], unpack(ARGV, 4))
return ARGV[2]
"""

# ARGV: fence, reason. Back to queued after a transient failure (the message is redelivered or retried).
_REQUEUE = """
if redis.call('HGET', KEYS[1], 'fence') ~= ARGV[1] then return 0 end
local state = redis.call('HGET', KEYS[1], 'state')
if state ~= 'running' and state ~= 'finishing' then return 0 end
redis.call('HSET', KEYS[1], 'state', 'queued', 'last_error', ARGV[2])
return redis.call('HINCRBY', KEYS[1], 'retries', 1)
"""

# ARGV: now, ttl. The state before the call (false when gone). Finishing jobs are past cancelling.
_CANCEL = _LIB + """
local state = redis.call('HGET', KEYS[1], 'state')
if not state then return false end
if state == 'queued' or state == 'running' then
  finish_with('cancelled', ARGV[2], 'finished_at', ARGV[1])
end
return state
"""


@dataclass(frozen=True)
class Outcome:
    """A terminal write: the attempt (``fence``) that writes it, the state, and the fields that go with it."""

    job_id: str
    fence: int
    state: JobState
    fields: dict[str, Any]


class JobStore:
    """Reads and writes job records. Producers create, read and cancel; workers start, progress and finish."""

    def __init__(self, settings: Settings, client: redis.Redis | None = None) -> None:
        self.settings = settings
        self.redis = client if client is not None else redis_client(settings)
        register = self.redis.register_script
        self._create, self._observe, self._start = register(_CREATE), register(_OBSERVE), register(_START)
        self._progress, self._commit, self._finish = register(_PROGRESS), register(_COMMIT), register(_FINISH)
        self._requeue, self._cancel = register(_REQUEUE), register(_CANCEL)

    def key(self, job_id: str) -> str:
        return keys.job_key(self.settings, job_id)

    def done(self, job_id: str) -> str:
        return keys.done_key(self.settings, job_id)

    def _keys(self, job_id: str) -> list[str]:
        return [self.key(job_id), self.done(job_id)]

    def _script_keys(self, job_id: str) -> list[str]:
        """The keys of the scripts that may end a job (``_LIB``): its own, then the callback outbox's."""
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
        out = pipe.execute()
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
        publishing, a worker dies as it takes it) is sent again (``workers.reaper``). ``notify``: a list each
        job's final state and record key are pushed onto when it ends (a batch runner watches its jobs so)."""
        now = time.time() if now is None else now
        pipe = self.redis.pipeline(transaction=False)
        for job in jobs:
            fields = {"state": JobState.QUEUED.value, "created_at": now, "priority": job.get("priority", "normal"),
                      "model": job.get("model"), "pairs_total": len(job["documents"]), "pairs_done": 0,
                      "deadline_at": deadline_of(job, now), "task_id": task_id,
                      "wire": json.dumps(job, separators=(",", ":")) if sent else None, "notify": notify,
                      "callback_url": job.get("callback_url")}
            self._create(keys=[self.key(job["job_id"])], args=[self.settings.results.failure_ttl_s,
                                                               *_flatten(fields)], client=pipe)
            if sent:
                pipe.zadd(keys.pending_key(keys.job_queue(self.settings, job)), {job["job_id"]: now}, nx=True)

        def undo(out: list[Any]) -> None:
            # Not acknowledged: the caller publishes nothing and will retry with the same ids, which must find
            # no record (a record without a message would stay queued for good).
            created = [job for job, new in zip(jobs, out[::2] if sent else out, strict=True) if new]
            self.forget(created)

        out = self._execute(pipe, undo)
        return [bool(x) for x in (out[::2] if sent else out)]

    def forget(self, jobs: list[dict[str, Any]]) -> None:
        """Delete new records whose messages were not published (and their pending entries)."""
        if not jobs:
            return
        pipe = self.redis.pipeline(transaction=False)
        for job in jobs:
            pipe.delete(*self._keys(job["job_id"]))
            pipe.zrem(keys.pending_key(keys.job_queue(self.settings, job)), job["job_id"])
        pipe.execute()

    def creator(self, job_id: str) -> str | None:
        """The Celery task id of the message that created the record (None: the SDK did, or no record)."""
        value = self.redis.hget(self.key(job_id), "task_id")
        return None if value is None else _text(value)

    def fail_new(self, job_id: str, error: str, priority: str = "normal") -> bool:
        """A record that starts and ends ``failed`` (an invalid message from a producer that made no record).
        False when the id exists already (its record is left as it is)."""
        now = time.time()
        fields = {"state": JobState.FAILED.value, "created_at": now, "finished_at": now, "priority": priority,
                  "pairs_total": 0, "pairs_done": 0, "error": error, "ends": 1}
        pipe = self.redis.pipeline(transaction=False)
        self._create(keys=[self.key(job_id)], args=[self.settings.results.failure_ttl_s, *_flatten(fields)],
                     client=pipe)
        pipe.rpush(self.done(job_id), "1")
        pipe.expire(self.done(job_id), self.settings.results.failure_ttl_s)
        return bool(self._execute(pipe)[0])

    def cancel(self, job_id: str) -> str:
        """Cancel a queued or running job; returns the state it had. Terminal and finishing jobs are left as
        they are (a finishing job is writing its result: it reads as running and ends succeeded)."""
        state = self._cancel(keys=self._script_keys(job_id), args=[time.time(), self.settings.results.ttl_s])
        if state is None:
            raise NoSuchJob(job_id)
        text = _text(state)
        return JobState.RUNNING.value if text == FINISHING else text

    def delete(self, job_id: str) -> None:
        self.redis.delete(*self._keys(job_id))

    # reading -------------------------------------------------------------------------------------
    def record(self, job_id: str) -> JobRecord:
        """The record (a queued job past its deadline is expired first); ``NoSuchJob`` if unknown."""
        pipe = self.redis.pipeline(transaction=False)
        self._observe(keys=self._script_keys(job_id), args=[time.time(), self.settings.results.failure_ttl_s],
                      client=pipe)
        pipe.hgetall(self.key(job_id))
        raw = pipe.execute()[1]
        if not raw:
            raise NoSuchJob(job_id)
        return JobRecord.from_hash(job_id, raw)

    def status(self, job_id: str) -> dict[str, Any]:
        """SPEC §3 status."""
        return self.record(job_id).status()

    def records(self, job_ids: list[str]) -> list[JobRecord | None]:
        """Many records in one round trip, deadlines applied as in ``record``; None for an unknown id."""
        pipe = self.redis.pipeline(transaction=False)
        now, ttl = time.time(), self.settings.results.failure_ttl_s
        for job_id in job_ids:
            self._observe(keys=self._script_keys(job_id), args=[now, ttl], client=pipe)
            pipe.hgetall(self.key(job_id))
        raws = pipe.execute()[1::2]
        return [JobRecord.from_hash(j, raw) if raw else None for j, raw in zip(job_ids, raws, strict=True)]

    def states(self, job_ids: list[str]) -> list[JobState | None]:
        """Public states of many jobs in one round trip (None for unknown ids), deadlines applied."""
        pipe = self.redis.pipeline(transaction=False)
        now, ttl = time.time(), self.settings.results.failure_ttl_s
        for job_id in job_ids:
            self._observe(keys=self._script_keys(job_id), args=[now, ttl], client=pipe)
        return [_public(s) for s in pipe.execute()]

    # worker side ---------------------------------------------------------------------------------
    def start_many(self, starts: list[tuple[str, int, bool]], worker: str) -> list[Started]:
        """Take jobs (``(job_id, pairs_total, solo)`` each) for this worker in one round trip."""
        pipe = self.redis.pipeline(transaction=False)
        now, ttl = time.time(), self.settings.results.failure_ttl_s
        for job_id, total, solo in starts:
            self._start(keys=self._script_keys(job_id), args=[worker, now, total, ttl,
                                                              self.settings.max_deliveries, int(solo)], client=pipe)
        out: list[Started] = []
        for found in pipe.execute():
            if not found:
                out.append(Started(None, now))
                continue
            state = _public(found[0])
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
        pipe.execute()

    def commit_many(self, attempts: list[tuple[str, int]]) -> list[str | None]:
        """Claim the right to write each result: ``finishing`` where granted, else what stops it (``cancelled``,
        ``stale`` for an attempt that no longer holds the job, a terminal state, None when gone)."""
        pipe = self.redis.pipeline(transaction=False)
        for job_id, fence in attempts:
            self._commit(keys=[self.key(job_id)], args=[fence], client=pipe)
        return [None if s is None else _text(s) for s in pipe.execute()]

    def finish_many(self, outcomes: list[Outcome]) -> list[str | None]:
        """Write terminal states; each returns the state written, or what refused it (``stale``, the terminal
        state already there, None when the record is gone). Never reopens or rewrites a finished job."""
        pipe = self.redis.pipeline(transaction=False)
        now = time.time()
        for o in outcomes:
            payload = {"finished_at": now, **o.fields}
            self._finish(keys=self._script_keys(o.job_id), args=[o.fence, o.state.value, self._ttl(o.state),
                                                          *_flatten(payload)], client=pipe)
        return [None if s is None else _text(s) for s in self._execute(pipe)]

    def peek(self, job_id: str) -> JobState | None:
        """The public state, as stored (no deadline check): one HGET."""
        return _public(self.redis.hget(self.key(job_id), "state"))

    def requeue(self, job_id: str, fence: int, reason: str) -> int:
        """Back to queued after a transient failure; returns the job's retry count (0 = refused: stale)."""
        return int(self._requeue(keys=[self.key(job_id)], args=[fence, reason]))


def _public(state: bytes | str | None) -> JobState | None:
    if state is None:
        return None
    text = _text(state)
    return JobState.RUNNING if text == FINISHING else JobState(text)


def deadline_of(job: dict[str, Any], now: float) -> float | None:
    """The absolute deadline of a job: ``expires_at`` (epoch seconds), or ``deadline_s`` after ``now``."""
    if job.get("expires_at") is not None:
        return float(job["expires_at"])
    if job.get("deadline_s") is not None:
        return now + float(job["deadline_s"])
    return None


def result_fields(result: dict[str, Any], uri: str | None) -> dict[str, Any]:
    """The record fields that hold a result: inline JSON, or the S3 pointer."""
    return {"result_uri": uri} if uri else {"result": json.dumps(result, separators=(",", ":"))}
