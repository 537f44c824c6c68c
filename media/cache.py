"""Bookkeeping for the media layer: thread-safe counters and the per-worker cache of decoded media.

The cache holds decoded ``VisionInput``s (not raw bytes: decoding and resizing cost more than fetching a
small object), is bounded in bytes and evicts the least recently used entry. Lookups of the same key that
arrive while it is being computed wait for that one computation (single-flight), so an object referenced by
many jobs of a batch is fetched and decoded once. Failures are not cached.
"""

from __future__ import annotations

import threading
from collections import OrderedDict, defaultdict
from collections.abc import Callable, Hashable
from concurrent.futures import Future
from typing import Generic, TypeVar

V = TypeVar("V")


class Counters:
    """Named counters shared by fetch threads (``fetches``, ``bytes_fetched``, ``cache_hits``, ...)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._values: defaultdict[str, float] = defaultdict(float)

    def add(self, **amounts: float) -> None:
        with self._lock:
            for name, amount in amounts.items():
                self._values[name] += amount

    def snapshot(self) -> dict[str, float]:
        with self._lock:
            return dict(self._values)

    def reset(self) -> None:
        with self._lock:
            self._values.clear()


class DecodedCache(Generic[V]):
    """A thread-safe LRU cache bounded in bytes, with single-flight computation of missing entries.

    ``size_of(value)`` gives an entry's cost in bytes. An entry larger than the capacity is returned but not
    kept; a capacity of 0 disables caching (single-flight still applies to concurrent lookups).
    """

    def __init__(self, capacity_bytes: int, counters: Counters, size_of: Callable[[V], int]) -> None:
        self.capacity = capacity_bytes
        self.counters = counters
        self._size_of = size_of
        self._lock = threading.Lock()
        self._entries: OrderedDict[Hashable, tuple[V, int]] = OrderedDict()
        self._inflight: dict[Hashable, Future[V]] = {}
        self._bytes = 0

    @property
    def nbytes(self) -> int:
        return self._bytes

    def __len__(self) -> int:
        return len(self._entries)

    def get_or_compute(self, key: Hashable, compute: Callable[[], V]) -> V:
        """The cached value of ``key``, or ``compute()`` (run once even when many threads ask at once)."""
        with self._lock:
            if key in self._entries:
                self._entries.move_to_end(key)
                self.counters.add(cache_hits=1)
                return self._entries[key][0]
            waiting = self._inflight.get(key)
            if waiting is None:
                future: Future[V] = Future()
                self._inflight[key] = future
                self.counters.add(cache_misses=1)
        if waiting is not None:
            self.counters.add(cache_hits=1, cache_shared=1)
            return waiting.result()
        try:
            value = compute()
        except BaseException as exc:
            with self._lock:
                del self._inflight[key]
            future.set_exception(exc)
            raise
        with self._lock:
            del self._inflight[key]
            self._store(key, value)
        future.set_result(value)
        return value

    def _store(self, key: Hashable, value: V) -> None:
        size = self._size_of(value)
        if size > self.capacity:
            return
        self._entries[key] = (value, size)
        self._bytes += size
        while self._bytes > self.capacity:
            _, (_, evicted) = self._entries.popitem(last=False)
            self._bytes -= evicted
            self.counters.add(cache_evictions=1)

    def clear(self) -> None:
        with self._lock:
            self._entries.clear()
            self._bytes = 0
