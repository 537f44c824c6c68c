"""The worker registry and the throughput series, against a real Redis."""

from __future__ import annotations

import time

import redis

from rerankq import registry
from rerankq.settings import Settings


def test_workers_register_refresh_and_expire(redis_url: str) -> None:
    settings = Settings(redis_url=redis_url, queue_prefix="reg")
    client = redis.Redis.from_url(redis_url)
    registry.register(client, settings, "w1", "Qwen/Qwen3-VL-Reranker-2B", "cuda:0", ttl_s=30, pairs_scored=5)
    registry.register(client, settings, "w2", "Qwen/Qwen3-VL-Reranker-8B", "cuda:1", ttl_s=1)
    first = registry.live_workers(client, settings)
    assert [(w["name"], w["model"], w["device"], w["pairs_scored"]) for w in first] == [
        ("w1", "Qwen/Qwen3-VL-Reranker-2B", "cuda:0", 5), ("w2", "Qwen/Qwen3-VL-Reranker-8B", "cuda:1", 0)]
    time.sleep(0.05)
    registry.register(client, settings, "w1", "Qwen/Qwen3-VL-Reranker-2B", "cuda:0", ttl_s=30, pairs_scored=9)
    (w1, _) = registry.live_workers(client, settings)
    assert w1["started_at"] == first[0]["started_at"] < w1["seen_at"] and w1["pairs_scored"] == 9
    time.sleep(1.2)  # w2 stopped beating
    assert [w["name"] for w in registry.live_workers(client, settings)] == ["w1"]
    registry.unregister(client, settings, "w1")
    assert registry.live_workers(client, settings) == []
    assert registry.live_workers(client, Settings(redis_url=redis_url, queue_prefix="other")) == []
    client.close()


def test_throughput_series_counts_pairs_per_slot(redis_url: str) -> None:
    settings = Settings(redis_url=redis_url, queue_prefix="reg")
    client = redis.Redis.from_url(redis_url)
    now = 1_000_000.0  # a slot boundary: 100000 * SLOT_S
    registry.add_pairs(client, settings, 30, now=now - 15)  # the slot before last
    registry.add_pairs(client, settings, 50, now=now - 5)  # the last complete slot
    registry.add_pairs(client, settings, 20, now=now - 4)
    registry.add_pairs(client, settings, 7, now=now + 1)  # the current slot: not in the series
    series = registry.pairs_series(client, settings, window_s=30, now=now + 2)
    assert [p["pairs_per_s"] for p in series] == [0.0, 3.0, 7.0]
    assert series[-1]["t"] == now - registry.SLOT_S
    rate = registry.recent_rate(client, settings, window_s=30, now=now + 2)
    assert rate == (30 + 70 + 7) / (2 * registry.SLOT_S + 2)
    assert client.ttl(f"reg:stats:pairs:{int(now // registry.SLOT_S)}") > registry.SERIES_S
    client.close()
