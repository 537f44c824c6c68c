"""Shards: one deployment's jobs spread over several Redis servers (``RERANKQ_REDIS_SHARDS``).

Each job lives entirely on one shard (its record, done list, queue message, lease, callback event), chosen
from its id alone, so any client finds a job from its id:

1. its *slot*: CRC16 of the id (Redis Cluster's CRC16, ``binascii.crc_hqx``) mod ``SLOTS`` (16384). As in Redis
   Cluster, an id with a ``{hash tag}`` would be hashed on the tag alone (``{user42}-a`` and ``{user42}-b``
   sharing a slot); job and batch ids cannot hold braces today (``rerankq.schema.JOB_ID_PATTERN``), so every
   id is hashed whole;
2. its *shard*: the jump consistent hash (Lamping & Veach, 2014) of the slot over the number of shards. Going
   from N shards to N+1 moves only slots *to* the new shard (about 1/(N+1) of them), never between old ones,
   as long as shards are only appended: add new shards at the end of the list, never reorder or remove one.

Jobs created before a shard was added may live on a shard other than the one their id now names: a read that
finds no record on the job's shard looks on the others (``rerankq.shardjobs``). With one shard (no
``redis_shards``) nothing here is used: every process talks to ``redis_url``, as before.
"""

from __future__ import annotations

import binascii
from collections.abc import Iterable

import redis

from rerankq.connections import redis_client
from rerankq.errors import RerankqError
from rerankq.settings import Settings

SLOTS = 16384
_MASK64 = (1 << 64) - 1


def hashed_part(job_id: str) -> str:
    """The part of an id that is hashed: the first ``{...}`` with something inside, else the whole id."""
    start = job_id.find("{")
    if start >= 0:
        end = job_id.find("}", start + 1)
        if end > start + 1:
            return job_id[start + 1:end]
    return job_id


def slot_of(job_id: str) -> int:
    """The slot of an id (0 to 16383), as Redis Cluster computes it."""
    return binascii.crc_hqx(hashed_part(job_id).encode(), 0) % SLOTS


def jump(key: int, buckets: int) -> int:
    """Jump consistent hash: the bucket (0 to ``buckets`` - 1) of a 64-bit key."""
    if buckets < 1:
        raise ValueError(f"buckets must be at least 1, got {buckets}")
    b, j = -1, 0
    while j < buckets:
        b = j
        key = (key * 2862933555777941757 + 1) & _MASK64
        j = int((b + 1) * (float(1 << 31) / float((key >> 33) + 1)))
    return b


def shard_of(job_id: str, count: int) -> int:
    """The shard (0 to ``count`` - 1) a job with this id lives on."""
    return 0 if count <= 1 else jump(slot_of(job_id), count)


class Shards:
    """The deployment's shards: their URLs, single-shard settings for each, and a Redis client each (made when
    first used). Index ``i`` is the position in ``RERANKQ_REDIS_SHARDS``; without shards there is one, index 0,
    ``redis_url``."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.urls = list(settings.redis_shards) or [settings.redis_url]
        self._clients: list[redis.Redis | None] = [None] * len(self.urls)
        self._table = [shard_of_slot(slot, len(self.urls)) for slot in range(SLOTS)] if self.many else []

    @property
    def count(self) -> int:
        return len(self.urls)

    @property
    def many(self) -> bool:
        return len(self.urls) > 1

    @property
    def home(self) -> int:
        """This process's own shard (``settings.shard``, else 0): where what belongs to no job lives."""
        return self.settings.shard or 0

    def index(self, job_id: str) -> int:
        """The shard a job (or batch) id lives on."""
        return self._table[slot_of(job_id)] if self.many else 0

    def single(self, i: int) -> Settings:
        """Settings for shard ``i`` alone: ``redis_url`` its URL, no shard list (a client of one Redis)."""
        return self.settings.model_copy(update={"redis_url": self.urls[i], "redis_shards": [], "shard": None})

    def client(self, i: int) -> redis.Redis:
        found = self._clients[i]
        if found is None:
            found = self._clients[i] = redis_client(self.single(i))
        return found

    def clients(self) -> list[redis.Redis]:
        return [self.client(i) for i in range(self.count)]

    def group(self, job_ids: Iterable[str]) -> dict[int, list[int]]:
        """Positions of ``job_ids`` by shard, in order of first appearance."""
        out: dict[int, list[int]] = {}
        for position, job_id in enumerate(job_ids):
            out.setdefault(self.index(job_id), []).append(position)
        return out

    def others(self, i: int) -> list[int]:
        """Every shard but ``i``: where a record made before a shard was added may be."""
        return [k for k in range(self.count) if k != i]

    def close(self) -> None:
        for client in self._clients:
            if client is not None:
                client.close()


def shard_of_slot(slot: int, count: int) -> int:
    return 0 if count <= 1 else jump(slot, count)


class ShardNotChosen(RerankqError):
    """A process that serves one shard (a worker, a batcher, Flower) was not told which."""


def serving(shard: int | None, command: str) -> Settings:
    """The settings of a process that serves one shard: ``shard`` (``--shard``), else ``RERANKQ_SHARD``; its
    ``redis_url`` is then that shard's. With several shards and none chosen, ``ShardNotChosen``; without shards,
    the settings as they are."""
    settings = Settings() if shard is None else Settings(shard=shard)
    if len(settings.redis_shards) > 1 and settings.shard is None:
        raise ShardNotChosen(f"{command} serves one shard: RERANKQ_REDIS_SHARDS lists {len(settings.redis_shards)}, "
                             f"so give it --shard I or RERANKQ_SHARD=I (0 to {len(settings.redis_shards) - 1})")
    return settings
