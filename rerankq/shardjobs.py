"""``ShardedJobs``: the producer side's reads and cancels of job records (``JobStore``'s), over several shards.

Each call goes to the job's shard (``rerankq.shards``), one pipelined round trip per shard involved. An id
whose record is not on its shard is looked for on the others (a job created before a shard was added lives on
the shard its id named then): only ids not found cost that second look. Names (``key``, ``done``) are the same
on every shard. Creating jobs and everything a worker does stays with one shard's ``JobStore``.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, TypeVar

from rerankq.errors import NoSuchJob
from rerankq.jobs import JobRecord, JobState
from rerankq.jobstore import JobStore
from rerankq.shards import Shards

T = TypeVar("T")


class ShardedJobs:
    """``JobStore``'s reading surface over ``stores`` (one per shard, in shard order)."""

    def __init__(self, shards: Shards, stores: list[JobStore]) -> None:
        self.shards = shards
        self.stores = stores
        self.settings = stores[0].settings

    def key(self, job_id: str) -> str:
        return self.stores[0].key(job_id)

    def done(self, job_id: str) -> str:
        return self.stores[0].done(job_id)

    def store_of(self, job_id: str) -> JobStore:
        return self.stores[self.shards.index(job_id)]

    def _lookup(self, job_ids: list[str], read: Callable[[JobStore, list[str]], list[T | None]]) -> list[T | None]:
        """``read`` on each shard for its ids; the ids it finds nothing for, on every other shard in turn."""
        out: list[T | None] = [None] * len(job_ids)
        home: dict[int, int] = {}
        for shard, positions in self.shards.group(job_ids).items():
            for position, value in zip(positions, read(self.stores[shard], [job_ids[p] for p in positions]),
                                       strict=True):
                out[position] = value
                home[position] = shard
        for shard in range(self.shards.count):
            missing = [p for p in range(len(job_ids)) if out[p] is None and home[p] != shard]
            if not missing:
                continue
            for position, value in zip(missing, read(self.stores[shard], [job_ids[p] for p in missing]),
                                       strict=True):
                out[position] = value
        return out

    def records(self, job_ids: list[str]) -> list[JobRecord | None]:
        return self._lookup(job_ids, JobStore.records)

    def ended_records(self, job_ids: list[str]) -> list[JobRecord | None]:
        return self._lookup(job_ids, JobStore.ended_records)

    def states(self, job_ids: list[str], watch: bool = False) -> list[JobState | None]:
        return self._lookup(job_ids, lambda store, ids: store.states(ids, watch))

    def peek_many(self, job_ids: list[str]) -> list[JobState | None]:
        return self._lookup(job_ids, JobStore.peek_many)

    def _first(self, job_id: str, call: Callable[[JobStore], T]) -> T:
        """``call`` on the job's shard; on ``NoSuchJob``, on the others; ``NoSuchJob`` when none has it."""
        primary = self.shards.index(job_id)
        for shard in [primary, *self.shards.others(primary)]:
            try:
                return call(self.stores[shard])
            except NoSuchJob:
                continue
        raise NoSuchJob(job_id)

    def record(self, job_id: str) -> JobRecord:
        return self._first(job_id, lambda store: store.record(job_id))

    def status(self, job_id: str) -> dict[str, Any]:
        return self.record(job_id).status()

    def cancel(self, job_id: str) -> str:
        return self._first(job_id, lambda store: store.cancel(job_id))

    def peek(self, job_id: str) -> JobState | None:
        return self.peek_many([job_id])[0]
