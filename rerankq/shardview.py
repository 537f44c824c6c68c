"""The deployment seen whole when its jobs are spread over shards (``rerankq.shards``): the worker registry and
the throughput series of every shard, merged (``rerankq.registry`` reads one Redis each).

Workers register on the shard they serve; with several shards each entry says which (``shard``). With one
client these are ``rerankq.registry``'s own answers, the same commands.
"""

from __future__ import annotations

import time
from typing import Any

import redis

from rerankq import registry
from rerankq.settings import Settings


def live_workers(clients: list[redis.Redis], settings: Settings) -> list[dict[str, Any]]:
    """Every registered worker of every shard, sorted by model then name (``shard``: its index, with several)."""
    if len(clients) == 1:
        return registry.live_workers(clients[0], settings)
    workers = [{**worker, "shard": i} for i, client in enumerate(clients)
               for worker in registry.live_workers(client, settings)]
    return sorted(workers, key=lambda w: (w.get("model", ""), w.get("name", "")))


def pairs_series(clients: list[redis.Redis], settings: Settings, window_s: int = 300) -> list[dict[str, float]]:
    """``registry.pairs_series`` summed over shards, slot by slot."""
    now = time.time()  # one clock for every shard: the same slots
    series = [registry.pairs_series(client, settings, window_s, now) for client in clients]
    return [{"t": points[0]["t"], "pairs_per_s": sum(p["pairs_per_s"] for p in points)}
            for points in zip(*series, strict=True)]


def recent_rate(clients: list[redis.Redis], settings: Settings, window_s: int = 60) -> float:
    """``registry.recent_rate`` summed over shards."""
    now = time.time()
    return sum(registry.recent_rate(client, settings, window_s, now) for client in clients)
