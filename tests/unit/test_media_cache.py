"""The decoded-media cache: bounded in bytes, least recently used out first, one computation per key."""

from __future__ import annotations

import threading
import time

import pytest

from rerankq.media.cache import Counters, DecodedCache


def _cache(capacity: int) -> tuple[DecodedCache[bytes], Counters]:
    counters = Counters()
    return DecodedCache(capacity, counters, size_of=len), counters


def test_repeated_key_is_computed_once() -> None:
    cache, counters = _cache(100)
    calls: list[str] = []
    for _ in range(3):
        assert cache.get_or_compute("a", lambda: calls.append("a") or b"xx") == b"xx"
    assert calls == ["a"]
    assert counters.snapshot() == {"cache_misses": 1, "cache_hits": 2}


def test_least_recently_used_entries_go_first_when_bytes_run_out() -> None:
    cache, counters = _cache(10)
    cache.get_or_compute("a", lambda: b"a" * 4)
    cache.get_or_compute("b", lambda: b"b" * 4)
    cache.get_or_compute("a", lambda: b"")  # touch a: b is now the oldest
    cache.get_or_compute("c", lambda: b"c" * 4)  # 12 bytes > 10: b goes
    assert (len(cache), cache.nbytes) == (2, 8)
    assert cache.get_or_compute("a", lambda: b"recomputed") == b"a" * 4
    assert cache.get_or_compute("b", lambda: b"recomputed") == b"recomputed"
    assert counters.snapshot()["cache_evictions"] >= 1


def test_entry_larger_than_the_cache_is_returned_but_not_kept() -> None:
    cache, _ = _cache(5)
    assert cache.get_or_compute("big", lambda: b"x" * 6) == b"x" * 6
    assert (len(cache), cache.nbytes) == (0, 0)


def test_failures_are_not_cached() -> None:
    cache, _ = _cache(100)
    with pytest.raises(ValueError):
        cache.get_or_compute("a", lambda: (_ for _ in ()).throw(ValueError("boom")))
    assert cache.get_or_compute("a", lambda: b"ok") == b"ok"


def test_concurrent_lookups_of_one_key_share_one_computation() -> None:
    cache, counters = _cache(0)  # even with caching off, concurrent lookups are single-flight
    calls = 0
    release = threading.Event()

    def slow() -> bytes:
        nonlocal calls
        calls += 1
        release.wait(5)
        return b"v"

    results: list[bytes] = []
    threads = [threading.Thread(target=lambda: results.append(cache.get_or_compute("k", slow))) for _ in range(8)]
    for thread in threads:
        thread.start()
    time.sleep(0.2)
    release.set()
    for thread in threads:
        thread.join(5)
    assert (calls, results) == (1, [b"v"] * 8)
    assert counters.snapshot()["cache_hits"] == 7


def test_waiters_see_the_failure_of_the_shared_computation() -> None:
    cache, _ = _cache(100)
    started, release = threading.Event(), threading.Event()

    def failing() -> bytes:
        started.set()
        release.wait(5)
        raise KeyError("gone")

    errors: list[BaseException] = []

    def lookup() -> None:
        try:
            cache.get_or_compute("k", failing)
        except KeyError as exc:
            errors.append(exc)

    owner = threading.Thread(target=lookup)
    owner.start()
    started.wait(5)
    waiter = threading.Thread(target=lookup)
    waiter.start()
    time.sleep(0.1)
    release.set()
    owner.join(5)
    waiter.join(5)
    assert len(errors) == 2
