"""One task per gateway process that waits for every job its callers wait for, on one Redis connection.

A waiting call costs an asyncio future, not a connection: ``watch(job_id)`` returns a future that resolves when
the job is terminal. The task marks each new job watched as it reads its state (a watched job's end pushes a
token on its done list, ``rerankq.keys.done_key``), then ``BLPOP``s the done tokens of all watched jobs at
once, plus a private *wake* list that ``watch`` pushes to when a new job joins, so that the next ``BLPOP``
covers it. Jobs the gateway submits to wait for (a synchronous rerank call) name the gateway's own notify list
instead (``created``): their ends arrive there with their outcome (``rerankq.client.waiting``), with no state
read, no done list and no wake-up, and ``outcome`` hands the result to the call without a record read. A
popped token is put back, so other waiters (the SDK, other replicas) wake too. Every
``SWEEP_S`` seconds without news the states are read in one pipeline, in case another client took a token.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
import uuid
from collections.abc import Awaitable, Callable
from typing import Any

from rerankq import keys
from rerankq.client.waiting import POP_MAX, parse_end
from rerankq.connections import async_redis_client
from rerankq.jobs import TERMINAL, JobRecord, JobState
from rerankq.settings import Settings

logger = logging.getLogger(__name__)

SWEEP_S = 1.0  # BLPOP slice; states are re-read after a quiet slice
MAX_KEYS = 4096  # done keys per BLPOP; beyond that the sweep (one pipeline) covers the rest
HEARD_KEEP_S = 60.0  # an end heard on the notify list before (or after) anyone waited for it is kept this long


class Waiter:
    """Resolves futures when jobs end. ``start()`` in the app's lifespan, ``stop()`` at shutdown."""

    def __init__(self, settings: Settings, client: Any,
                 states: Callable[[list[str], bool], Awaitable[list[JobState | None]]],
                 notify_key: str | None = None) -> None:
        self.settings = settings
        self.redis = client
        self.notify_key = notify_key or keys.notify_key(settings, f"gateway-{uuid.uuid4().hex}")
        self._record_prefix = keys.job_key(settings, "")
        self._mine: set[str] = set()  # jobs whose ends come on ``notify_key``
        self._heard: dict[str, tuple[float, JobRecord | None]] = {}  # ended on the list, not (or no longer) waited
        self.states = states  # the job store's reading of states (deadlines applied; True: mark them watched)
        self._watched: set[str] = set()  # jobs whose state was read with the watch mark
        self.blocking = async_redis_client(settings, max_connections=1)  # a BLPOP holds it up to SWEEP_S
        self.wake_key = f"{settings.queue_prefix}:gateway:wake:{uuid.uuid4().hex}"
        self.futures: dict[str, asyncio.Future[None]] = {}
        self.users: dict[str, int] = {}
        self._changed = asyncio.Event()
        self._poked = False
        self._task: asyncio.Task[None] | None = None

    @property
    def waiting(self) -> int:
        return sum(self.users.values())

    def start(self) -> None:
        self._task = asyncio.create_task(self._run(), name="rerankq-waiter")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        with contextlib.suppress(Exception):
            await self.redis.delete(self.wake_key)
        await self.blocking.connection_pool.disconnect()
        await self.blocking.aclose()

    def created(self, job_id: str) -> None:
        """``job_id`` was submitted naming ``notify_key``: its end arrives there."""
        self._mine.add(job_id)

    def outcome(self, job_id: str) -> JobRecord | None:
        """The job's record as far as a caller reads it (state, result or its URI, error), as its end announced
        it on the notify list; None when it did not come that way."""
        heard = self._heard.pop(job_id, None)
        return heard[1] if heard else None

    def watch(self, job_id: str) -> asyncio.Future[None]:
        """A future that resolves once ``job_id`` is terminal (shared by every caller of the same job)."""
        fut = self.futures.get(job_id)
        if fut is None:
            fut = self.futures[job_id] = asyncio.get_running_loop().create_future()
            self._changed.set()
            if job_id in self._heard:
                fut.set_result(None)
            elif job_id not in self._mine and not self._poked:  # interrupt the BLPOP: the next one includes it
                self._poked = True
                asyncio.get_running_loop().create_task(self._poke())
        self.users[job_id] = self.users.get(job_id, 0) + 1
        return fut

    def forget(self, job_id: str) -> None:
        """One caller of ``watch(job_id)`` stops waiting."""
        left = self.users.get(job_id, 0) - 1
        if left > 0:
            self.users[job_id] = left
            return
        self.users.pop(job_id, None)
        self._watched.discard(job_id)
        self._mine.discard(job_id)
        fut = self.futures.pop(job_id, None)
        if fut is not None and not fut.done():
            fut.cancel()

    async def _poke(self) -> None:
        with contextlib.suppress(Exception):
            pipe = self.redis.pipeline(transaction=False)
            pipe.rpush(self.wake_key, "1")
            pipe.expire(self.wake_key, 60)
            await pipe.execute()

    def _resolve(self, job_id: str) -> None:
        fut = self.futures.get(job_id)
        if fut is not None and not fut.done():
            fut.set_result(None)

    async def _run(self) -> None:
        while True:
            try:
                await self._step()
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # Redis blinked: keep the futures, retry shortly
                logger.warning("waiter: %s", exc)
                await asyncio.sleep(0.5)

    async def _step(self) -> None:
        pending = [j for j, f in self.futures.items() if not f.done()]
        if not pending:
            self._changed.clear()
            await self._changed.wait()
            return
        self._poked = False
        self._prune()
        fresh = [j for j in pending if j not in self._watched and j not in self._mine]
        if fresh:  # marked watched before the first BLPOP on their tokens; those ended already resolve now
            await self._sweep(fresh, watch=True)
            self._watched.update(fresh)
            pending = [j for j in pending if not self.futures[j].done()]
            if not pending:
                return
        others = [j for j in pending if j not in self._mine]
        watched = [keys.done_key(self.settings, j) for j in others[:MAX_KEYS]]
        popped = await self.blocking.blpop([self.wake_key, self.notify_key, *watched], timeout=SWEEP_S)
        if popped is None or len(others) > MAX_KEYS:
            await self._sweep(pending)
        if popped is None:
            return
        key = popped[0].decode() if isinstance(popped[0], bytes) else str(popped[0])
        if key == self.wake_key:
            return
        if key == self.notify_key:
            more = await self.redis.lpop(self.notify_key, POP_MAX) or []
            for entry in [popped[1], *more]:
                job_id, _, record = parse_end(entry, self._record_prefix)
                self._heard[job_id] = (time.monotonic(), record)
                self._resolve(job_id)
            return
        pipe = self.redis.pipeline(transaction=False)
        pipe.rpush(key, b"1")  # put the token back for other waiters
        pipe.expire(key, self.settings.results.ttl_s)
        await pipe.execute()
        self._resolve(key.removeprefix(f"{self.settings.queue_prefix}:job:").removesuffix(":done"))

    def _prune(self) -> None:
        """Ends heard for jobs nobody read (a caller that timed out or went away) are let go after a while."""
        if self._heard:
            old = time.monotonic() - HEARD_KEEP_S
            for job_id in [j for j, (at, _) in self._heard.items() if at < old]:
                del self._heard[job_id]

    async def _sweep(self, job_ids: list[str], watch: bool = False) -> None:
        for job_id, state in zip(job_ids, await self.states(job_ids, watch), strict=True):
            if state is None or state in TERMINAL:  # gone counts as ended: callers re-read and 404
                self._resolve(job_id)
