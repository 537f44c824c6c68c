"""Intake: what a worker may take, and knowing what it took.

``IntakeGate`` is a consumer bootstep that lets the Celery consumer fetch a message only while the runtime
is forming a round and has room (``Runtime.accepting``), and wakes the consumer's event loop when a round
opens. A worker thus holds one round being scored and one being formed, never a backlog: a ``high`` job waits
for no ``low`` job that is merely reserved, and a worker started into a busy cluster finds the queue, not
other workers' buffers.

``Intake`` holds what the worker took until a round runs it, and forms rounds: the first job to arrive and
what follows within the flush interval (and for as long as the scorer is busy), at most ``batch.max_jobs``,
highest priority first. ``Transit`` counts the messages the consumer took that have not reached the runtime
yet (Celery hands each to a task thread, which validates it and submits its job): a round that closes waits
for them, so that a ``high`` job taken as the round closed is scored in it, not after the ``low`` jobs beside
it; when that leaves more than ``max_jobs``, the lowest wait for the next round.
"""

from __future__ import annotations

import contextlib
import heapq
import itertools
import os
import queue
import threading
import time
from collections import deque
from collections.abc import Callable
from types import MethodType
from typing import Any, Protocol

from celery import bootsteps

from rerankq import keys
from rerankq.keys import PRIORITIES
from rerankq.settings import BatchSettings
from rerankq.worker.held import HeldJob

STALE_S = 5.0  # a taken message that never reached a task (revoked, an unknown task name) stops counting
GATHER_S = 1.0  # longest a closing round waits for messages taken but not yet submitted


class Transit:
    """Task ids of messages taken by this worker's consumer and not yet handed to its runtime."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._taken: dict[str, float] = {}

    def taken(self, task_id: str) -> None:
        with self._lock:
            self._taken[task_id] = time.monotonic()

    def arrived(self, task_id: str) -> None:
        with self._lock:
            self._taken.pop(task_id, None)

    def waiting(self) -> int:
        now = time.monotonic()
        with self._lock:
            for task_id in [t for t, at in self._taken.items() if now - at > STALE_S]:
                del self._taken[task_id]
            return len(self._taken)


class Intake:
    """The jobs a worker holds before they run, and how a round is formed from them: the inbox task threads
    submit to, jobs carried over from a full round, media retries waiting their turn, lone runs of jobs whose
    last holder died. ``ready(jobs)`` is the flush policy (``Runtime._round_ready``)."""

    def __init__(self, settings: BatchSettings, ready: Callable[[int], bool]) -> None:
        self.settings = settings
        self.ready = ready
        self.transit = Transit()
        self.on_open: Callable[[], None] = lambda: None  # set by the intake gate: wakes the consumer
        self._inbox: queue.Queue[HeldJob] = queue.Queue()
        self._carry: list[HeldJob] = []  # taken for a round that had no room left: first in the next one
        self._solo: deque[HeldJob] = deque()
        self._delayed: list[tuple[float, int, HeldJob]] = []  # (due, tie-break, run): media retries
        self._delayed_lock = threading.Lock()
        self._tie = itertools.count()
        self._open = threading.Event()

    def submit(self, run: HeldJob, task_id: str | None) -> None:
        self._inbox.put(run)
        if task_id is not None:
            self.transit.arrived(task_id)

    def accepting(self) -> bool:
        return self._open.is_set() and self._inbox.qsize() < self.settings.max_jobs

    def room(self, in_transit: int) -> int:
        """How many more messages the round being formed can take (``in_transit``: taken, not yet submitted)."""
        if not self._open.is_set():
            return 0
        return max(self.settings.max_jobs - self._inbox.qsize() - in_transit, 0)

    def delay(self, run: HeldJob, seconds: float) -> None:
        """Hold a job back (a media retry) until ``seconds`` from now; it leads a later round."""
        with self._delayed_lock:
            heapq.heappush(self._delayed, (time.monotonic() + seconds, next(self._tie), run))

    def take(self) -> list[HeldJob]:
        """The next round's jobs: a lone job whose last holder died; retries that are due; else the first
        job to arrive and what follows (``_fill``). The intake is open from the moment the previous round
        was handed over until this one is formed."""
        if self._solo:
            return [self._solo.popleft()]
        if not self._open.is_set():
            self._open.set()
            self.on_open()
        runs, self._carry = self._carry + self._due(), []
        if not runs:
            try:
                runs = [self._inbox.get(timeout=0.2)]
            except queue.Empty:
                return []  # still open: the consumer may fetch while nothing waits
        self._fill(runs)
        alone = [r for r in runs if r.solo]
        if len(alone) == len(runs):
            self._solo.extend(alone[1:])
            return alone[:1]
        self._solo.extend(alone)
        return [r for r in runs if not r.solo]

    def _fill(self, runs: list[HeldJob]) -> None:
        """Add what arrives within the flush interval, and after it for as long as the scorer has more than
        its last batch to run (a fuller round then costs no latency); at most ``max_jobs``."""
        deadline = time.monotonic() + self.settings.flush_interval_ms / 1000
        while len(runs) < self.settings.max_jobs:
            wait = deadline - time.monotonic()
            if wait <= 0:
                if self.ready(len(runs)):
                    break
                wait = 0.005
            with contextlib.suppress(queue.Empty):
                runs.append(self._inbox.get(timeout=wait))
        self._open.clear()
        self._gather(runs)
        # Highest priority first: a job taken as the round closed goes in ahead of lower ones, which wait.
        runs.sort(key=lambda run: PRIORITIES.index(run.job.priority))
        self._carry = runs[self.settings.max_jobs:]
        del runs[self.settings.max_jobs:]

    def _gather(self, runs: list[HeldJob]) -> None:
        """Add what the consumer took before the intake closed: arrived, or still on its way through Celery
        (``transit``; a second at most, if Celery has no free task thread)."""
        deadline = time.monotonic() + GATHER_S
        while True:
            with contextlib.suppress(queue.Empty):
                while True:
                    runs.append(self._inbox.get_nowait())
            if not self.transit.waiting() or time.monotonic() > deadline:
                return
            with contextlib.suppress(queue.Empty):
                runs.append(self._inbox.get(timeout=0.002))

    def _due(self) -> list[HeldJob]:
        now = time.monotonic()
        with self._delayed_lock:
            due: list[HeldJob] = []
            while self._delayed and self._delayed[0][0] <= now and len(due) < self.settings.max_jobs:
                due.append(heapq.heappop(self._delayed)[2])
        return due


class Gated(Protocol):
    """What the intake gate needs of the worker's runtime (``rerankq.worker.runtime.Runtime``)."""

    intake: Intake
    transit: Transit

    def accepting(self) -> bool: ...


class IntakeGate(bootsteps.StartStopStep):
    """Consumer bootstep: fetch only while ``runtime.accepting()``; wake the loop when a round opens; count
    what the consumer takes (``runtime.transit``). Celery builds bootsteps from classes: ``gate_for(runtime)``
    gives the class bound to this process's runtime."""

    requires = ("celery.worker.consumer.tasks:Tasks",)
    runtime: Gated | None = None

    def __init__(self, parent: Any, **kwargs: Any) -> None:
        super().__init__(parent, **kwargs)
        self._pipe: tuple[int, int] | None = None

    def start(self, c: Any) -> None:
        runtime = self.runtime
        if runtime is None or c.task_consumer is None:
            return
        qos = c.task_consumer.channel.qos
        original = qos.can_consume

        def can_consume(self: Any) -> bool:
            return bool(runtime.accepting() and original())

        qos.can_consume = MethodType(can_consume, qos)
        append = qos.append

        def append_and_count(self: Any, message: Any, delivery_tag: str) -> None:
            append(message, delivery_tag)
            headers = message.headers or {}
            if headers.get("task") == keys.TASK_NAME and headers.get("id") is not None:  # not batch runs
                runtime.transit.taken(str(headers["id"]))

        qos.append = MethodType(append_and_count, qos)
        qos.take_room = lambda: runtime.intake.room(runtime.transit.waiting())  # read by the transport's take
        if c.hub is not None:
            if self._pipe is None:
                self._pipe = os.pipe()
                os.set_blocking(self._pipe[0], False)
                os.set_blocking(self._pipe[1], False)
            read_fd, write_fd = self._pipe
            c.hub.add_reader(read_fd, self._drain, read_fd)
            runtime.intake.on_open = lambda: self._wake(write_fd)

    @staticmethod
    def _drain(fd: int) -> None:
        with contextlib.suppress(BlockingIOError):
            while os.read(fd, 512):
                pass

    @staticmethod
    def _wake(fd: int) -> None:
        with contextlib.suppress(BlockingIOError):  # a full pipe: the loop is awake already
            os.write(fd, b"x")


def gate_for(runtime: Gated) -> type[IntakeGate]:
    """The intake gate bootstep of a worker whose runtime is ``runtime``."""
    return type("IntakeGate", (IntakeGate,), {"runtime": runtime})
