"""Live workers and recent throughput, in Redis, for anyone to read (the HTTP gateway, dashboards).

Each worker keeps a hash ``{prefix}:worker:{name}`` (fields ``name``, ``model`` (the SPEC its queues are keyed
on), ``device``, ``quantization`` (``none``, ``int8``, ...), ``capabilities`` (what its model serves and reads,
``rerankq.capabilities``, as JSON), ``started_at``, ``seen_at``, ``pairs_scored``)
alive by re-registering it every ``HEARTBEAT_S`` seconds with a TTL of ``TTL_S``: a worker that dies drops
out of ``live_workers`` within the TTL, without anyone cleaning up.

Throughput: workers add the pairs they scored to a counter per ``SLOT_S``-second slot
(``{prefix}:stats:pairs:{slot}``, kept ``SERIES_S`` seconds), so ``pairs_series`` gives pairs/s over the last
minutes for the whole deployment, whichever process asks and since whenever it started.
"""

from __future__ import annotations

import time
from typing import Any

import redis

from rerankq import keys
from rerankq.capabilities import Capabilities, refusal
from rerankq.settings import Settings

HEARTBEAT_S = 5.0  # how often a worker re-registers (its lease beat; 3 beats per TTL)
TTL_S = 15  # a worker missing this long is gone
SLOT_S = 10  # throughput granularity (s)
SERIES_S = 900  # throughput history kept (s)


def _text(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else value


def register(client: redis.Redis, settings: Settings, name: str, model: str, device: str, ttl_s: int = TTL_S,
             **fields: Any) -> None:
    """Create or refresh worker ``name``'s entry (one round trip); extra ``fields`` are stored as given."""
    pipe = client.pipeline(transaction=False)
    pipe.hsetnx(keys.worker_key(settings, name), "started_at", time.time())
    queue_presence(pipe, settings, name, {"name": name, "model": model, "device": device, **fields}, ttl_s)
    pipe.execute()


def queue_presence(pipe: Any, settings: Settings, name: str, fields: dict[str, Any], ttl_s: int = TTL_S) -> int:
    """Queue on ``pipe`` the refresh of worker ``name``'s entry: ``fields`` and ``seen_at`` (now), and its TTL.
    Returns how many commands it queued (2). A worker's beat passes its own ``started_at`` among the fields."""
    key = keys.worker_key(settings, name)
    pipe.hset(key, mapping={**fields, "seen_at": time.time()})
    pipe.expire(key, ttl_s)
    return 2


def unregister(client: redis.Redis, settings: Settings, name: str) -> None:
    """Drop a worker's entry at a clean shutdown (a crashed one expires instead)."""
    client.delete(keys.worker_key(settings, name))


def live_workers(client: redis.Redis, settings: Settings) -> list[dict[str, Any]]:
    """Every registered worker (SCAN, then one pipelined read), sorted by model then name."""
    found = list(client.scan_iter(match=keys.worker_key(settings, "*"), count=500))
    pipe = client.pipeline(transaction=False)
    for key in found:
        pipe.hgetall(key)
    workers = []
    for raw in pipe.execute():
        if not raw:  # expired between SCAN and HGETALL
            continue
        entry: dict[str, Any] = {_text(k): _text(v) for k, v in raw.items()}
        for field in ("started_at", "seen_at"):
            entry[field] = float(entry.get(field) or 0)
        entry["pairs_scored"] = int(float(entry.get("pairs_scored") or 0))
        workers.append(entry)
    return sorted(workers, key=lambda w: (w.get("model", ""), w.get("name", "")))


def capabilities_of(worker: dict[str, Any]) -> Capabilities | None:
    """What a live worker's model serves, as it published it (None: a worker too old to say, or unreadable)."""
    text = worker.get("capabilities")
    if not text:
        return None
    try:
        return Capabilities.from_json(text)
    except (ValueError, TypeError):
        return None


def job_refusal(workers: list[dict[str, Any]], settings: Settings,
                job: dict[str, Any]) -> tuple[str, str] | None:
    """Why no live worker that would take ``job`` (a wire job: its ``model``, ``query``, ``documents``) can serve
    it: (field, reason), or None. None too when no such worker is live, or one does not say what it serves: the
    job may wait for, or go to, that one. Workers that disagree (a rolling upgrade): refused only if every one
    refuses. A rerank job with ``recall`` is checked against its recall model too, as the embedding job its
    query and documents become (field ``recall.model``, ``query`` or ``documents[i]``)."""
    recall = job.get("recall")
    if isinstance(recall, dict) and recall.get("model"):
        stage = {"task": "embed", "model": recall["model"], "inputs": [job.get("query"), *(job.get("documents") or [])]}
        why = job_refusal(workers, settings, stage)
        if why is not None:
            field = why[0]
            if field.startswith("inputs["):
                i = int(field[7:].split("]")[0])
                field = "query" if i == 0 else f"documents[{i - 1}]"
            return ("recall.model" if field == "task" else field), f"recall: {why[1]}"
    queues = keys.model_queue_names(settings, job.get("model"))
    reasons = []
    for worker in workers:
        if keys.model_queue_names(settings, worker.get("model")) != queues:
            continue
        caps = capabilities_of(worker)
        if caps is None:  # it does not say: it may serve the job
            return None
        task = str(job.get("task") or "rerank")
        why = refusal(str(worker.get("model")), caps, task, job.get("query"),
                      job.get("inputs" if task == "embed" else "documents") or [], job.get("dimensions"))
        if why is None:
            return None
        reasons.append(why)
    return reasons[0] if reasons else None


def add_pairs(client: redis.Redis, settings: Settings, pairs: int, now: float | None = None) -> None:
    """Count ``pairs`` scored now in the deployment's throughput series."""
    if pairs <= 0:
        return
    pipe = client.pipeline(transaction=False)
    queue_pairs(pipe, settings, pairs, now or time.time())
    pipe.execute()


def slot_of(now: float) -> int:
    """The throughput slot of a time."""
    return int(now // SLOT_S)


def queue_pairs(pipe: Any, settings: Settings, pairs: int, now: float, ttl: bool = True) -> int:
    """Queue on ``pipe`` adding ``pairs`` to the slot of ``now``, and with ``ttl`` the slot's expiry (once per
    slot is enough: a worker sets it on its first write to a slot). Returns how many commands it queued."""
    key = keys.pairs_slot_key(settings, slot_of(now))
    pipe.incrby(key, pairs)
    if ttl:
        pipe.expire(key, SERIES_S + SLOT_S)
    return 2 if ttl else 1


def set_slot_ttl(client: redis.Redis, settings: Settings, slot: int) -> None:
    """Give a slot its expiry (a slot a worker wrote to before, created again after a Redis restart)."""
    client.expire(keys.pairs_slot_key(settings, slot), SERIES_S + SLOT_S)


def pairs_series(client: redis.Redis, settings: Settings, window_s: int = 300,
                 now: float | None = None) -> list[dict[str, float]]:
    """Pairs/s per slot over the last ``window_s`` seconds, oldest first: ``[{"t": slot start, "pairs_per_s"}]``.
    The current, unfinished slot is left out (it would read low)."""
    current = slot_of(now or time.time())
    slots = list(range(current - max(window_s // SLOT_S, 1), current))
    values = client.mget([keys.pairs_slot_key(settings, s) for s in slots])
    return [{"t": float(s * SLOT_S), "pairs_per_s": int(v or 0) / SLOT_S} for s, v in zip(slots, values, strict=True)]


def recent_rate(client: redis.Redis, settings: Settings, window_s: int = 60, now: float | None = None) -> float:
    """Pairs/s over the last ``window_s`` seconds, the current slot included (what a dashboard shows as "now")."""
    now = now or time.time()
    current = slot_of(now)
    slots = list(range(current - max(window_s // SLOT_S, 1) + 1, current + 1))
    values = client.mget([keys.pairs_slot_key(settings, s) for s in slots])
    span = (len(slots) - 1) * SLOT_S + max(now - current * SLOT_S, 1.0)
    return sum(int(v or 0) for v in values) / span
