"""The job record: its states, its fields and every transition, in one place.

One Redis hash per job (``rerankq.keys.job_key``), separate from Celery's own keys (Celery calls every unknown
id PENDING; we say "no such job"). Each transition is one Lua script, atomic and one round trip
(``rerankq.transitions``), run by ``rerankq.jobstore.JobStore``:

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
- Terminal states push one token on ``done_key`` of a record a waiter marked ``watched`` (reading its state
  with ``JobStore.states(..., watch=True)``), so that waiters ``BLPOP`` instead of polling, and count
  themselves in the record's ``ends`` field: exactly 1 for every ended job (the chaos tests read it). A record
  with a ``notify`` list also gets ``STATE RECORD-KEY`` pushed there (a batch runner's one list for all its jobs).
- A job with a ``callback_url`` gets its completion event in the callback outbox from the same script that ends
  it, whichever that is (finish, cancel, expiry, poison): no ended job lacks its event (``rerankq.callbacks``).

Lifetimes: ``results.ttl_s`` after success or cancel, ``results.failure_ttl_s`` after failure or expiry and
while the job is live (longer than any queue wait).
"""

from __future__ import annotations

import base64
import json
import zlib
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any


class JobState(StrEnum):
    """Where a job is in its life: ``queued`` → ``running`` → ``succeeded`` | ``failed``, or ``cancelled`` or
    ``expired`` (docs/USAGE.md, *States*)."""

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
        data = {text_of(k): text_of(v) for k, v in raw.items()}

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
        """What ``status`` answers: id, state, progress (pairs done / total), timestamps, worker, error."""
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


def text_of(value: Any) -> str:
    """A Redis reply (bytes) or a value as text."""
    return value.decode() if isinstance(value, bytes) else str(value)


def pack_job(job: dict[str, Any]) -> str:
    """A job's JSON as the record keeps it (``wire``, until the job ends: what ``rerankq.worker.reaper`` sends again
    when its message was lost), compressed: it is most of what creating a record costs Redis."""
    return PACKED + base64.b64encode(zlib.compress(json.dumps(job, separators=(",", ":")).encode(), 6)).decode()


def unpack_job(value: bytes | str) -> dict[str, Any]:
    """The job a record's ``wire`` holds: packed (``pack_job``), or plain JSON (records of earlier versions)."""
    text = text_of(value)
    if text.startswith(PACKED):
        text = zlib.decompress(base64.b64decode(text.removeprefix(PACKED))).decode()
    job: dict[str, Any] = json.loads(text)
    return job


PACKED = "z:"  # the prefix of a packed ``wire``: zlib, then base64 (the record stays text: ``JobRecord.from_hash``)


def flatten_fields(fields: dict[str, Any]) -> list[Any]:
    return [x for k, v in fields.items() if v is not None for x in (k, v)]


@dataclass(frozen=True)
class Outcome:
    """A terminal write: the attempt (``fence``) that writes it, the state, and the fields that go with it."""

    job_id: str
    fence: int
    state: JobState
    fields: dict[str, Any]


def public_state(state: bytes | str | None) -> JobState | None:
    if state is None:
        return None
    text = text_of(state)
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
