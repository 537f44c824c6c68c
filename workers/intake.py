"""Intake: what a worker may take, and knowing what it took.

``IntakeGate`` is a consumer bootstep that lets the Celery consumer fetch a message only while the runtime
is forming a round and has room (``Runtime.accepting``), and wakes the consumer's event loop when a round
opens. A worker thus holds one round being scored and one being formed, never a backlog: a ``high`` job waits
for no ``low`` job that is merely reserved, and a worker started into a busy cluster finds the queue, not
other workers' buffers.

``Transit`` counts the messages the consumer took that have not reached the runtime yet (Celery hands each to
a task thread, which validates it and submits its job): a round that closes waits for them, so that a
``high`` job taken as the round closed is scored in it, not after the ``low`` jobs beside it.
"""

from __future__ import annotations

import contextlib
import os
import threading
import time
from types import MethodType
from typing import Any

from celery import bootsteps

from rerankq import keys

STALE_S = 5.0  # a taken message that never reached a task (revoked, an unknown task name) stops counting


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


class IntakeGate(bootsteps.StartStopStep):
    """Consumer bootstep: fetch only while ``runtime.accepting()``; wake the loop when a round opens; count
    what the consumer takes (``runtime.transit``)."""

    requires = ("celery.worker.consumer.tasks:Tasks",)

    def __init__(self, parent: Any, **kwargs: Any) -> None:
        super().__init__(parent, **kwargs)
        self._pipe: tuple[int, int] | None = None

    def start(self, c: Any) -> None:
        from workers.tasks import current_runtime

        runtime = current_runtime()
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
        if c.hub is not None:
            if self._pipe is None:
                self._pipe = os.pipe()
                os.set_blocking(self._pipe[0], False)
                os.set_blocking(self._pipe[1], False)
            read_fd, write_fd = self._pipe
            c.hub.add_reader(read_fd, self._drain, read_fd)
            runtime.on_open = lambda: self._wake(write_fd)

    @staticmethod
    def _drain(fd: int) -> None:
        with contextlib.suppress(BlockingIOError):
            while os.read(fd, 512):
                pass

    @staticmethod
    def _wake(fd: int) -> None:
        with contextlib.suppress(BlockingIOError):  # a full pipe: the loop is awake already
            os.write(fd, b"x")
