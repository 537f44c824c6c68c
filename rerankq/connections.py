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

from typing import Any, TypeVar
from urllib.parse import unquote, urlsplit

import redis
from redis.backoff import ExponentialBackoff
from redis.exceptions import ConnectionError, TimeoutError
from redis.retry import Retry

from rerankq.settings import Settings


class OneWrite:
    """A connection that sends each command, and each pipeline, in one write.

    redis-py cuts what it sends into pieces of about 6 kB (and sends a large value on a piece of its own). Pieces
    that reach Redis apart wake it apart: a wake-up per piece, which costs it more CPU than reading the bytes. A
    submit chunk's records, a round's leases and outcomes are pipelines of tens or hundreds of kB; sent whole,
    Redis reads them in a few reads of 16 kB without going back to sleep in between. The bytes are the same; past
    ``WRITE_MAX`` they go in writes of about that size (a copy that large at most, not of the whole pipeline)."""

    def pack_command(self, *args: Any) -> list[bytes]:
        return _joined(super().pack_command(*args))  # type: ignore[misc]

    def pack_commands(self, commands: Any) -> list[bytes]:
        return _joined(super().pack_commands(commands))  # type: ignore[misc]


WRITE_MAX = 1 << 20


def _joined(pieces: list[Any]) -> list[bytes]:
    out: list[bytes] = []
    start, size = 0, 0
    for i, piece in enumerate(pieces):
        size += len(piece)
        if size >= WRITE_MAX:
            out.append(b"".join(pieces[start:i + 1]))
            start, size = i + 1, 0
    if start < len(pieces):
        out.append(b"".join(pieces[start:]))
    return out


_ONE_WRITE: dict[type, type] = {}
C = TypeVar("C")


def one_write(connection_class: type[C]) -> type[C]:
    """``connection_class`` with ``OneWrite``'s sending (for kombu's channels as well as our clients)."""
    if connection_class not in _ONE_WRITE:
        _ONE_WRITE[connection_class] = type(connection_class.__name__, (OneWrite, connection_class), {})
    return _ONE_WRITE[connection_class]


_SCHEMES: dict[str, type[Any]] = {"redis": redis.Connection, "rediss": redis.SSLConnection,
                                   "unix": redis.UnixDomainSocketConnection}


def _following_connection() -> type:
    """redis-py's Sentinel connection, made to look the primary up again on every reconnect.

    redis-py 8 reconnects a dropped connection from ``send_packed_command`` through ``connect_check_health``,
    which reuses the address the connection last had and retries it for the whole retry budget: after a
    failover every pooled connection keeps dialling the dead primary for ~``redis_retry_s`` and then fails the
    command, although the Sentinels named the new primary within seconds."""
    from redis.sentinel import SentinelManagedConnection

    class FollowingConnection(OneWrite, SentinelManagedConnection):
        def connect_check_health(self, check_health: bool = True, retry_socket_connect: bool = True) -> None:
            if self._sock:
                return
            if self.connection_pool.is_master:
                self.host, self.port = self.connection_pool.get_master_address()
            # one dial per attempt: the caller's retry loop looks the primary up again before the next one
            super().connect_check_health(check_health=check_health, retry_socket_connect=False)

    return FollowingConnection


def _retry(settings: Settings) -> Retry:
    # 0.05, 0.1, 0.2, ... capped at 1 s: enough attempts to cover ``redis_retry_s``.
    attempts = max(3, int(settings.redis_retry_s) + 6)
    try:  # a refused login (a ConnectionError to redis-py) will not pass by retrying: fail at once
        return Retry(ExponentialBackoff(cap=1.0, base=0.05), attempts, is_retryable=_not_auth)
    except TypeError:  # redis-py before 8: no is_retryable
        return Retry(ExponentialBackoff(cap=1.0, base=0.05), attempts)


def _not_auth(error: Exception) -> bool:
    return not isinstance(error, redis.exceptions.AuthenticationError)


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
        return sentinel.master_for(settings.redis_master_name, db=db, password=password,
                                   connection_class=_following_connection(), **common)
    connection_class = one_write(_SCHEMES.get(urlsplit(url).scheme, redis.Connection))
    return redis.Redis.from_url(url, connection_class=connection_class, **common)


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


def shown_url(url: str) -> str:
    """``url`` with its password hidden, for messages (each part of a ``sentinel://`` list)."""
    from urllib.parse import urlunsplit

    shown = []
    for part in url.split(";"):
        parts = urlsplit(part)
        if parts.password:
            netloc = f"{parts.username or ''}:***@{parts.hostname}" + (f":{parts.port}" if parts.port else "")
            parts = parts._replace(netloc=netloc)
        shown.append(urlunsplit(parts))
    return ";".join(shown)


def _auth_error(exc: BaseException) -> BaseException | None:
    """The authentication error in ``exc``'s chain (kombu wraps redis-py's in ``OperationalError``)."""
    seen: set[int] = set()
    current: BaseException | None = exc
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        if isinstance(current, redis.exceptions.AuthenticationError) or str(current).startswith("NOAUTH"):
            return current
        current = current.__cause__ or current.__context__
    return None


def redis_problem(exc: BaseException, url: str) -> str | None:
    """One line for a failure to use Redis at ``url`` (``RERANKQ_REDIS_URL``), naming the setting; a refused
    login says so (no password given, or a wrong one) rather than "cannot reach". None when ``exc`` is not a
    connection problem."""
    from kombu.exceptions import OperationalError

    auth = _auth_error(exc)
    if auth is not None:
        given = any(urlsplit(part).password for part in url.split(";"))
        fix = ("the password in RERANKQ_REDIS_URL was refused: check it" if given else
               "RERANKQ_REDIS_URL has no password and this Redis requires one: put it in the URL, "
               "redis://:PASSWORD@host:port/db (or redis://USER:PASSWORD@... for an ACL user)")
        return f"Redis at {shown_url(url)} refused authentication: {fix} ({auth})"
    if isinstance(exc, ConnectionError | TimeoutError | OperationalError):
        return f"cannot reach Redis at {shown_url(url)} (RERANKQ_REDIS_URL): {exc}"
    return None
