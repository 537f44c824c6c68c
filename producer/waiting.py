"""Waiting for many jobs without reading them again and again: each ``RerankClient`` owns a *notify list*.

The records a client creates name its list (``{prefix}:notify:{client id}``), and the script that ends a job
pushes ``STATE RECORD-KEY`` onto it in the same step (``rerankq.transitions``), with a second line holding
what a waiter reads of the record (its result or result URI, or its error): a waiting client blocks on that
one list and reads no record at all: the Redis work of waiting for N jobs is O(N), not O(N) per wake. Ends
that arrive for jobs nobody asked about yet are kept until asked.

Jobs this client did not create (another client's ids, a ``job_id`` that existed already) are waited for by
reading their states, as before (``RerankClient.wait_any``). So is every job now and then: an end that never
reaches the list (its push lost in a failover, a queued job past its deadline that no worker has taken yet)
still ends the wait.
"""

from __future__ import annotations

import json
import time
import uuid
from collections.abc import Iterable
from typing import Any

import redis

from rerankq import keys
from rerankq.jobs import TERMINAL, JobRecord, JobState, text_of
from rerankq.settings import Settings

RECHECK_S = 10.0  # a wait that has heard nothing for this long reads the states of what it waits for
POP_MAX = 1000  # ends taken off the list per round trip


class Completions:
    """The ends of the jobs this client created, as they arrive on its notify list. ``enabled=False``: no list
    (a client that never waits on many jobs, as the gateway, which has a waiter of its own): ``key`` is None,
    and every job is waited for by reading its state."""

    def __init__(self, client: redis.Redis, settings: Settings, enabled: bool = True) -> None:
        self.redis = client
        self.key = keys.notify_key(settings, uuid.uuid4().hex) if enabled else None
        self._record_prefix = keys.job_key(settings, "")
        self._mine: set[str] = set()
        self._ended: dict[str, str] = {}  # job id → terminal state, heard and not yet asked for
        self._outcomes: dict[str, JobRecord] = {}  # job id → what its end said (``outcome``), until asked for

    def created(self, job_ids: Iterable[str]) -> None:
        """These jobs' records name this list: their ends will arrive on it."""
        if self.key is not None:
            self._mine.update(job_ids)

    def mine(self, job_id: str) -> bool:
        return job_id in self._mine

    def take(self, job_ids: Iterable[str]) -> list[str]:
        """Those of ``job_ids`` heard to have ended (each reported once)."""
        out = [j for j in job_ids if j in self._ended]
        for job_id in out:
            del self._ended[job_id]
            self._mine.discard(job_id)
        return out

    def forget(self, job_id: str) -> None:
        """A job whose end was learnt another way (its state read): nothing more to hear of it."""
        self._ended.pop(job_id, None)
        self._outcomes.pop(job_id, None)
        self._mine.discard(job_id)

    def outcome(self, job_id: str) -> JobRecord | None:
        """The ended job's record as far as a waiter reads it (state, result or its URI, error), as its end
        announced it; None when the announcement did not carry it (the record must be read)."""
        return self._outcomes.pop(job_id, None)

    def listen(self, timeout: float) -> int:
        """Block up to ``timeout`` s for ends; returns how many arrived (they go to ``take``)."""
        if self.key is None:
            return 0
        # One round trip: Redis holds the LPOP behind the blocked BLPOP and runs it once that returns, so the ends
        # that arrived together (a round's) come with the first.
        pipe = self.redis.pipeline(transaction=False)
        pipe.blpop([self.key], timeout=max(timeout, 0.01))
        pipe.lpop(self.key, POP_MAX)
        popped, rest = pipe.execute()
        if popped is None:
            return 0
        return self.heard([popped[1], *(rest or [])])

    def heard(self, entries: list[Any]) -> int:
        """Take in entries popped off the list (``STATE RECORD-KEY``, then the outcome's JSON line); returns how
        many."""
        for entry in entries:
            job_id, state, outcome = parse_end(entry, self._record_prefix)
            self._ended[job_id] = state
            if outcome is not None:
                self._outcomes[job_id] = outcome
        return len(entries)


def parse_end(entry: Any, record_prefix: str) -> tuple[str, str, JobRecord | None]:
    """A notify-list entry (``STATE RECORD-KEY``, then a JSON line of the outcome) → (job id, state, the record as
    far as a waiter reads it: state, result or its URI, error; None when the entry does not carry it)."""
    head, _, line = text_of(entry).partition("\n")
    state, _, record_key = head.partition(" ")
    job_id = record_key.removeprefix(record_prefix)
    if not line or state not in _TERMINAL_NAMES:
        return job_id, state, None
    fields = json.loads(line)
    return job_id, state, JobRecord(job_id, JobState(state), 0.0, error=fields.get("error"),
                                    result=fields.get("result"), result_uri=fields.get("result_uri"))


_TERMINAL_NAMES = frozenset(s.value for s in TERMINAL)


def deadline_left(deadline: float | None) -> float | None:
    return None if deadline is None else deadline - time.monotonic()
