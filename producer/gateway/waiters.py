"""The gateway's waiting over several shards: one ``Waiter`` per shard (its own blocking connection and wake
list, on that shard), a job's waits going to its shard's. A job that lives on another shard than its id names
(made before a shard was added) is still seen to end: every waiter's sweep reads states through the SDK, which
looks on every shard.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import Any

from rerankq.client.gateway.waiter import Waiter
from rerankq.jobs import JobRecord, JobState
from rerankq.shards import Shards


class Waiters:
    """``Waiter``'s surface (``watch``, ``forget``, ``waiting``, ``start``, ``stop``) over every shard."""

    def __init__(self, shards: Shards, clients: list[Any],
                 states: Callable[[list[str], bool], Awaitable[list[JobState | None]]], notify_key: str) -> None:
        self.shards = shards
        self.notify_key = notify_key  # one name, on every shard
        self.waiters = [Waiter(shards.single(i), client, states, notify_key) for i, client in enumerate(clients)]

    @property
    def waiting(self) -> int:
        return sum(w.waiting for w in self.waiters)

    def start(self) -> None:
        for waiter in self.waiters:
            waiter.start()

    async def stop(self) -> None:
        await asyncio.gather(*(w.stop() for w in self.waiters))

    def watch(self, job_id: str) -> asyncio.Future[None]:
        return self.waiters[self.shards.index(job_id)].watch(job_id)

    def forget(self, job_id: str) -> None:
        self.waiters[self.shards.index(job_id)].forget(job_id)

    def created(self, job_id: str) -> None:
        self.waiters[self.shards.index(job_id)].created(job_id)

    def outcome(self, job_id: str) -> JobRecord | None:
        return self.waiters[self.shards.index(job_id)].outcome(job_id)
