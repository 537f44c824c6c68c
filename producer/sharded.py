"""A ``RerankClient`` over several shards (``RERANKQ_REDIS_SHARDS``; ``rerankq.shards`` says how a job's shard
is chosen): one single-shard client per shard (its Redis, job store and Celery producer), and the routing.

- Submitting groups a chunk's jobs by shard: one pipelined round trip per shard creates their records, and each
  shard's producer publishes its jobs to that shard's broker.
- Reading, cancelling, waiting go to the job's shard (``rerankq.shardjobs.ShardedJobs``, which also looks on
  the other shards for a job created before a shard was added).
- The client's notify list has the same name on every shard; its ends are heard through ``FanIn`` (a thread
  per shard blocking on it). Waiting on other clients' jobs blocks on each shard's done lists, a thread per
  shard; the states are read between slices as in the single-shard client.
- A batch's record (and its runner's keys) lives on its id's shard; ``batches`` merges every shard's list.

With one shard none of this is built: ``RerankClient`` is exactly the single-Redis client.
"""

from __future__ import annotations

import queue
import threading
import time
from collections.abc import Callable
from typing import Any, Protocol

import redis
from celery import Celery

from rerankq import keys
from rerankq.batches import BatchRecord, BatchStore
from rerankq.client.capcheck import ModelCheck
from rerankq.client.fanin import FanIn
from rerankq.client.waiting import Completions
from rerankq.errors import NoSuchJob
from rerankq.jobs import TERMINAL, JobRecord, text_of
from rerankq.jobstore import JobStore
from rerankq.settings import Settings
from rerankq.shardjobs import ShardedJobs
from rerankq.shards import Shards

WAIT_SLICE_S = 2.0  # as the single-shard client's: states are read after a quiet slice


class Part(Protocol):
    """What a single-shard ``RerankClient`` offers here."""

    settings: Settings
    redis: redis.Redis
    jobs: JobStore
    celery: Celery
    completions: Completions
    models: ModelCheck

    def _enqueue(self, jobs: list[dict[str, Any]], notify: str | None = None) -> None: ...

    def close(self) -> None: ...


class ShardedCompletions:
    """``Completions`` over every shard: each part's tracks the jobs created on its shard; ends arrive on each
    shard's copy of the one notify list, through a ``FanIn``."""

    def __init__(self, shards: Shards, parts: list[Completions], clients: list[redis.Redis]) -> None:
        self.shards = shards
        self.parts = parts
        self.key = parts[0].key
        self._fanin = FanIn([(client, self.key) for client in clients]) if self.key is not None else None

    def created(self, job_ids: list[str]) -> None:
        for job_id in job_ids:
            self.parts[self.shards.index(job_id)].created([job_id])

    def mine(self, job_id: str) -> bool:
        return self.parts[self.shards.index(job_id)].mine(job_id)

    def take(self, job_ids: list[str]) -> list[str]:
        out: list[str] = []
        for shard, positions in self.shards.group(job_ids).items():
            out += self.parts[shard].take([job_ids[p] for p in positions])
        return out

    def forget(self, job_id: str) -> None:
        self.parts[self.shards.index(job_id)].forget(job_id)

    def outcome(self, job_id: str) -> JobRecord | None:
        return self.parts[self.shards.index(job_id)].outcome(job_id)

    def listen(self, timeout: float) -> int:
        if self._fanin is None:
            return 0
        return sum(self.parts[shard].heard(entries) for shard, entries in self._fanin.get(timeout))

    def close(self) -> None:
        if self._fanin is not None:
            self._fanin.close()


class ShardedParts:
    """The per-shard parts of one client and the routing between them (see the module doc)."""

    def __init__(self, settings: Settings, notify: bool, make: Callable[[Settings, bool], Part]) -> None:
        self.shards = Shards(settings)
        self.parts = [make(self.shards.single(i), notify) for i in range(self.shards.count)]
        for part in self.parts[1:]:  # one notify list name, on every shard
            part.completions.key = self.parts[0].completions.key
        self.home = self.parts[self.shards.home]
        self.jobs = ShardedJobs(self.shards, [part.jobs for part in self.parts])
        self.completions = ShardedCompletions(self.shards, [part.completions for part in self.parts],
                                              [part.redis for part in self.parts])

    def part_of(self, job_id: str) -> Part:
        return self.parts[self.shards.index(job_id)]

    def enqueue(self, jobs: list[dict[str, Any]], notify: str | None) -> None:
        """Each shard's jobs through its part: one round trip per shard creates them, its broker gets them."""
        for shard, positions in self.shards.group(job["job_id"] for job in jobs).items():
            self.parts[shard]._enqueue([jobs[p] for p in positions], notify)

    # waiting on jobs this client did not create -----------------------------------------------------------
    def _pop_done(self, part: Part, job_ids: list[str], timeout: float) -> str | None:
        """One ``BLPOP`` on the jobs' done lists of one shard; a popped token is put back for other waiters."""
        popped = part.redis.blpop([part.jobs.done(j) for j in job_ids], timeout=max(timeout, 0.01))
        if popped is None:
            return None
        key = text_of(popped[0])
        part.redis.rpush(key, b"1")
        part.redis.expire(key, part.settings.results.ttl_s)
        return key.removeprefix(f"{part.settings.queue_prefix}:job:").removesuffix(":done")

    def wait_any(self, job_ids: list[str], timeout: float | None, watched: bool = False) -> str | None:
        """``RerankClient.wait_any`` over shards: each shard's done lists blocked on (a thread per shard when
        the jobs span several), the states read (every shard looked at) after each quiet slice."""
        deadline = None if timeout is None else time.monotonic() + timeout
        if not watched:  # the others are marked watched: their ends push done tokens
            ended = [j for j, s in zip(job_ids, self.jobs.states(job_ids, watch=True), strict=True)
                     if s is None or s in TERMINAL]
            if ended:
                return ended[0]
        groups = [(self.parts[shard], [job_ids[p] for p in positions])
                  for shard, positions in self.shards.group(job_ids).items()]
        watchers = _Watchers(self._pop_done, groups, deadline) if len(groups) > 1 else None
        try:
            while True:
                left = _slice(deadline)
                if left <= 0:
                    return None
                popped = watchers.get(left) if watchers is not None else self._pop_done(*groups[0], left)
                if popped is not None:
                    return popped
                finished = [j for j, s in zip(job_ids, self.jobs.states(job_ids, watch=True), strict=True)
                            if s is None or s in TERMINAL]
                if finished:
                    return finished[0]
        finally:
            if watchers is not None:
                watchers.stop.set()

    # batches --------------------------------------------------------------------------------------------------
    def batch_stores(self, batch_id: str) -> list[BatchStore]:
        """The batch's shard's store first, then the others' (a batch made before a shard was added)."""
        primary = self.shards.index(batch_id)
        return [BatchStore(self.parts[0].settings, self.parts[s].redis)
                for s in [primary, *self.shards.others(primary)]]

    def batch(self, batch_id: str, call: Callable[[BatchStore], Any]) -> Any:
        for store in self.batch_stores(batch_id):
            try:
                return call(store)
            except NoSuchJob:
                continue
        raise NoSuchJob(batch_id, what="batch")

    def batch_home(self, batch_id: str) -> Part:
        """The part whose shard holds the batch's record: its id's, unless only another has it."""
        primary = self.shards.index(batch_id)
        for shard in [primary, *self.shards.others(primary)]:
            if self.parts[shard].redis.exists(keys.batch_key(self.parts[0].settings, batch_id)):
                return self.parts[shard]
        return self.parts[primary]

    def batches(self, limit: int) -> list[BatchRecord]:
        """The newest ``limit`` batches of every shard, newest first."""
        found = [r for part in self.parts for r in BatchStore(part.settings, part.redis).list(limit)]
        return sorted(found, key=lambda r: -r.created_at)[:limit]

    def fanin(self, key: str) -> FanIn:
        """A ``FanIn`` on the list ``key`` of every shard (a batch runner's ``ended`` list)."""
        return FanIn([(part.redis, key) for part in self.parts])

    def close(self) -> None:
        self.completions.close()
        for part in self.parts:
            part.close()


def _slice(deadline: float | None) -> float:
    return WAIT_SLICE_S if deadline is None else min(WAIT_SLICE_S, deadline - time.monotonic())


class _Watchers:
    """A thread per shard, each blocking on its jobs' done lists (``pop``) slice after slice until one pops,
    the deadline passes or ``stop`` is set; ``get`` waits for the first id popped."""

    def __init__(self, pop: Callable[[Part, list[str], float], str | None], groups: list[tuple[Part, list[str]]],
                 deadline: float | None) -> None:
        self.pop, self.deadline = pop, deadline
        self.found: queue.Queue[str] = queue.Queue()
        self.stop = threading.Event()
        for part, ids in groups:
            threading.Thread(target=self._watch, args=(part, ids), daemon=True, name="rerankq-wait").start()

    def _watch(self, part: Part, ids: list[str]) -> None:
        while not self.stop.is_set():
            left = _slice(self.deadline)
            if left <= 0:
                return
            try:
                job_id = self.pop(part, ids, left)
            except redis.RedisError:
                self.stop.wait(0.5)
                continue
            if job_id is not None:
                self.found.put(job_id)
                return

    def get(self, timeout: float) -> str | None:
        try:
            return self.found.get(timeout=timeout)
        except queue.Empty:
            return None
