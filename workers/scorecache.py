"""The score cache's store: scores by content key (``rerankq.models.scorekeys``) in a Redis of its own; the
round engine's ``ScoreStore`` in a worker (``rerankq.models.engine``).

Bounded by that Redis, never by the broker's: ``cache.redis_url`` must reach another server (a worker refuses
one that is the broker, compared by ``run_id``), and that server should run with ``maxmemory`` and
``maxmemory-policy allkeys-lru``, so old scores are evicted when it fills while queues and job records, on the
broker with ``noeviction``, never can be. Each entry also expires after ``cache.ttl_s``.

A cache must never fail a job: every call here catches its own failures, logs them, counts them
(``rerankq_cache_errors_total``) and answers "nothing"; after a failure the cache is left alone for
``cache.retry_s`` (a dead cache then costs nothing per round), with short socket timeouts and no retries.
A value is the score's ``repr``: a hit returns exactly the float that was stored. An embedding model's vectors
are stored as the engine encodes them (``rerankq.keys.VECTOR_PREFIX`` and float32 bytes) and come back as bytes.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Mapping, Sequence
from typing import Any

import redis
from redis.backoff import NoBackoff
from redis.retry import Retry

from rerankq import keys
from rerankq.settings import CacheSettings
from rerankq.worker.metrics import Metrics

logger = logging.getLogger(__name__)

BOUNDED_POLICIES = ("allkeys-lru", "allkeys-lfu", "allkeys-random", "volatile-lru", "volatile-lfu",
                    "volatile-random", "volatile-ttl")  # every cache entry has a TTL: volatile-* evict them too


class CacheRefused(RuntimeError):
    """The cache's Redis is the broker's: using it would evict jobs (LRU) or fill the job store."""


def redacted(url: str) -> str:
    """The URL without its password, for logs."""
    head, at, tail = url.rpartition("@")
    return f"{head.split('//', 1)[0]}//***@{tail}" if at else url


class ScoreCache:
    """``get_many`` / ``put_many`` on the cache's Redis, each one round trip, never raising."""

    def __init__(self, settings: CacheSettings, metrics: Metrics, broker: redis.Redis | None = None,
                 client: redis.Redis | None = None) -> None:
        c = settings
        self.settings = settings
        self.metrics = metrics
        self.broker = broker
        self.client = client or redis.Redis.from_url(
            c.redis_url, socket_timeout=c.timeout_s, socket_connect_timeout=c.timeout_s,
            retry=Retry(NoBackoff(), 0), health_check_interval=0)
        self._down_until = 0.0
        self._verified = False
        self.refused = False

    def available(self) -> bool:
        """Whether to use the cache now: not refused, and no failure within the last ``cache.retry_s``."""
        return not self.refused and time.monotonic() >= self._down_until

    def get_many(self, digests: Sequence[str]) -> dict[str, float | bytes] | None:
        """The stored score (or vector) of each digest that has one; None when the cache could not be asked."""
        wanted = list(dict.fromkeys(digests))
        if not wanted:
            return {}
        if not self.available():
            return None
        try:
            self._verify()
            values = self.client.mget([keys.score_key(d) for d in wanted])
        except Exception as exc:
            self._failed("look-up", exc)
            return None
        found: dict[str, float | bytes] = {}
        for digest, value in zip(wanted, values, strict=True):
            if value is None:
                continue
            if isinstance(value, bytes) and value.startswith(keys.VECTOR_PREFIX):
                found[digest] = value
                continue
            try:
                found[digest] = float(value)
            except ValueError:  # not ours (a stray key): a miss, and the next write replaces it
                self.metrics.cache_errors.inc()
        return found

    def put_many(self, scores: Mapping[str, float | bytes]) -> None:
        """Store fresh scores (or vectors), with the TTL, in one pipelined round trip."""
        if not scores or not self.available():
            return
        ttl = self.settings.ttl_s
        try:
            self._verify()
            pipe = self.client.pipeline(transaction=False)
            for digest, score in scores.items():
                value = score if isinstance(score, bytes) else repr(float(score))
                pipe.set(keys.score_key(digest), value, ex=ttl)
            pipe.execute()
        except Exception as exc:
            self._failed("write", exc)

    def _failed(self, what: str, exc: Exception) -> None:
        self.metrics.cache_errors.inc()
        if isinstance(exc, CacheRefused):
            return
        retry = self.settings.retry_s
        logger.warning("score cache %s failed (%s: %s); scoring without it for %.0f s", what, type(exc).__name__,
                       exc, retry)
        self._down_until = time.monotonic() + retry

    def _verify(self) -> None:
        """Once, on first contact: refuse the broker's Redis; say when the cache's Redis is unbounded."""
        if self._verified:
            return
        if self.broker is not None and _server_id(self.client) == _server_id(self.broker):
            self.refused = True
            logger.error("RERANKQ_CACHE__REDIS_URL (%s) reaches the broker's Redis: the score cache needs a Redis "
                         "of its own (maxmemory + allkeys-lru); it stays off", redacted(self.settings.redis_url))
            raise CacheRefused("the cache's Redis is the broker's")
        self._verified = True
        policy, maxmemory = _memory_policy(self.client)
        if policy is not None and (policy not in BOUNDED_POLICIES or not maxmemory):
            logger.warning("the score cache's Redis has maxmemory %s and maxmemory-policy %s: it grows until its "
                           "entries expire (cache.ttl_s); give it maxmemory and allkeys-lru", maxmemory, policy)
        logger.info("score cache on %s (policy %s, maxmemory %s)", redacted(self.settings.redis_url),
                    policy or "unknown", maxmemory)


def _server_id(client: redis.Redis) -> Any:
    return client.info("server").get("run_id")


def _memory_policy(client: redis.Redis) -> tuple[str | None, int]:
    """(maxmemory-policy, maxmemory); (None, 0) where CONFIG is not allowed (managed Redis services)."""
    try:
        config = client.config_get("maxmemory*")
    except redis.RedisError:
        return None, 0
    as_text = {k.decode() if isinstance(k, bytes) else k: v.decode() if isinstance(v, bytes) else v
               for k, v in config.items()}
    return as_text.get("maxmemory-policy"), int(as_text.get("maxmemory") or 0)
