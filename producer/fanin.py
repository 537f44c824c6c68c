"""``FanIn``: wait on lists that live on several Redis servers (shards) at once, without spinning.

One ``BLPOP`` cannot span servers, and taking turns on short ``BLPOP``s would either spin or add the turns to
every wake's latency. So each list gets a small daemon thread that blocks on it (``BLPOP``, then ``LPOP`` of up
to ``POP_MAX`` more) and hands what it popped to one ``queue.Queue``; ``get`` blocks on that queue. An idle
``FanIn`` costs each server one ``BLPOP`` per ``SLICE_S``. Threads start on the first ``get`` and stop at
``close`` (within a slice). Entries popped after the last ``get`` are lost with the process, as any popped entry
is: the lists it serves (notify lists, a batch's ``ended`` list) are backed by reading states now and then.
"""

from __future__ import annotations

import logging
import queue
import threading
from typing import Any

import redis

logger = logging.getLogger(__name__)

SLICE_S = 2.0  # each thread's BLPOP timeout: how often an idle thread looks at the stop flag
POP_MAX = 1000  # entries taken per round trip after a BLPOP wakes
RETRY_S = 0.5  # pause after a Redis error (a restart or failover: the client retries inside each command too)


class FanIn:
    """Pops from ``sources`` (``(client, key)`` each) into one queue; ``get`` returns ``(source index, entries)``
    pairs."""

    def __init__(self, sources: list[tuple[redis.Redis, str]]) -> None:
        self.sources = sources
        self._queue: queue.Queue[tuple[int, list[Any]]] = queue.Queue()
        self._stop = threading.Event()
        self._threads: list[threading.Thread] = []

    def _start(self) -> None:
        for i, (client, key) in enumerate(self.sources):
            thread = threading.Thread(target=self._pop, args=(i, client, key), daemon=True,
                                      name=f"rerankq-fanin-{i}")
            thread.start()
            self._threads.append(thread)

    def _pop(self, i: int, client: redis.Redis, key: str) -> None:
        while not self._stop.is_set():
            try:
                popped = client.blpop([key], timeout=SLICE_S)
                if popped is not None:
                    self._queue.put((i, [popped[1], *(client.lpop(key, POP_MAX) or [])]))
            except redis.RedisError as exc:
                if self._stop.is_set():
                    return
                logger.debug("waiting on %s: %s", key, exc)
                self._stop.wait(RETRY_S)

    def get(self, timeout: float) -> list[tuple[int, list[Any]]]:
        """Block up to ``timeout`` s for entries from any source; then everything else already popped."""
        if not self._threads:
            self._start()
        try:
            out = [self._queue.get(timeout=max(timeout, 0.001))]
        except queue.Empty:
            return []
        while True:
            try:
                out.append(self._queue.get_nowait())
            except queue.Empty:
                return out

    def close(self) -> None:
        """Stop the threads (each ends within ``SLICE_S``; not waited for)."""
        self._stop.set()
