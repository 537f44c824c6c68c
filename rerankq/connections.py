"""Redis connections: one place that turns ``settings.redis_url`` into a client, for the job store, the
producer, the workers and the gateway alike.

- ``redis://``, ``rediss://`` (TLS), ``unix://``: a plain client; the password goes in the URL.
- ``sentinel://host:26379;sentinel://host2:26379/0``: the current primary of ``settings.redis_master_name``,
  found through the Sentinels (the same URL Celery's broker uses); after a failover the client follows the
  new primary.

Every client retries a command that met a dropped connection (a Redis restart, a failover) with exponential
backoff for about ``redis_retry_s`` seconds, so a blip is not an error for the caller.
"""

from __future__ import annotations

from typing import Any
from urllib.parse import unquote, urlsplit

import redis
from redis.backoff import ExponentialBackoff
from redis.exceptions import ConnectionError, TimeoutError
from redis.retry import Retry

from rerankq.settings import Settings


def _retry(settings: Settings) -> Retry:
    # 0.05, 0.1, 0.2, ... capped at 1 s: enough attempts to cover ``redis_retry_s``.
    attempts = max(3, int(settings.redis_retry_s) + 6)
    return Retry(ExponentialBackoff(cap=1.0, base=0.05), attempts)


def sentinel_hosts(url: str) -> tuple[list[tuple[str, int]], str | None, int]:
    """The (host, port) of each Sentinel in a ``sentinel://`` URL (``;``-separated), its password and db."""
    hosts, password, db = [], None, 0
    for part in url.split(";"):
        parts = urlsplit(part.strip())
        hosts.append((parts.hostname or "127.0.0.1", parts.port or 26379))
        password = unquote(parts.password) if parts.password else password
        db = int(parts.path.strip("/") or db)
    return hosts, password, db


def redis_client(settings: Settings, **options: Any) -> redis.Redis:
    """A client for ``settings.redis_url`` (see the module doc)."""
    common: dict[str, Any] = {"retry": _retry(settings), "retry_on_error": [ConnectionError, TimeoutError],
                                 "health_check_interval": 10, "socket_keepalive": True, **options}
    url = settings.redis_url
    if url.startswith("sentinel://"):
        from redis.sentinel import Sentinel

        hosts, password, db = sentinel_hosts(url)
        sentinel = Sentinel(hosts, socket_timeout=2.0, password=password)
        return sentinel.master_for(settings.redis_master_name, db=db, password=password, **common)
    return redis.Redis.from_url(url, **common)


def async_redis_client(settings: Settings, max_connections: int = 32) -> Any:
    """An asyncio client (``redis.asyncio``, for the HTTP gateway) for the same URL forms; at most
    ``max_connections`` connections, callers wait for a free one rather than fail."""
    import redis.asyncio as aioredis

    url = settings.redis_url
    if url.startswith("sentinel://"):
        from redis.asyncio.sentinel import Sentinel

        hosts, password, db = sentinel_hosts(url)
        sentinel = Sentinel(hosts, socket_timeout=2.0, password=password)
        return sentinel.master_for(settings.redis_master_name, db=db, password=password)
    pool = aioredis.BlockingConnectionPool.from_url(url, max_connections=max_connections, timeout=30)
    return aioredis.Redis(connection_pool=pool)
