"""kombu's Redis transport, keeping how many subscribers each fanout publish reached.

Celery's events (task-sent from producers, task events from workers) go out as Redis ``PUBLISH`` on the event
exchange; ``PUBLISH`` replies how many subscribers heard it, which kombu drops. These channels keep it
(``fanout_receivers``), so that whoever sends events can stop sending them while nothing listens (a monitor
such as Flower subscribes when it starts). The producers' transport is this module's; the workers' adds its
own changes on top (``rerankq.worker.transport``).
"""

from __future__ import annotations

import time
from typing import Any

import redis
from kombu.transport import redis as kombu_redis
from redis.sentinel import SentinelManagedConnection

from rerankq.connections import one_write


class CountingChannel(kombu_redis.Channel):
    """kombu's Redis channel; ``fanout_receivers``: how many subscribers the last fanout publish reached. Its
    connections send a pipeline in one write (``rerankq.connections.OneWrite``)."""

    fanout_receivers: int | None = None
    connection_class = one_write(redis.Connection)
    connection_class_ssl = one_write(redis.SSLConnection)

    def _put_fanout(self, exchange: str, message: Any, routing_key: str, **kwargs: Any) -> None:
        if kwargs.get("_publish_batch") is not None:
            super()._put_fanout(exchange, message, routing_key, **kwargs)
            return
        payload = kombu_redis.dumps(message)
        heard = 0
        with self.conn_or_acquire() as client:
            for topic in self._get_publish_topics(exchange, routing_key):
                heard += int(client.publish(topic, payload) or 0)
        self.fanout_receivers = heard


class CountingSentinelChannel(CountingChannel, kombu_redis.SentinelChannel):
    """The same, for ``sentinel://`` URLs."""

    connection_class = one_write(SentinelManagedConnection)
    connection_class_ssl = one_write(kombu_redis.SentinelManagedSSLConnection)


class Transport(kombu_redis.Transport):
    Channel = CountingChannel


class SentinelTransport(kombu_redis.SentinelTransport):
    Channel = CountingSentinelChannel


def transport_for(url: str) -> str:
    """Celery's ``broker_transport`` for a producer on ``url``."""
    return f"rerankq.fanout:{'SentinelTransport' if url.startswith('sentinel://') else 'Transport'}"


PROBE_S = 1.0  # after an event message nobody heard, task events are dropped for this long


class Audience:
    """Whether anything heard the last event message of a sender, and when that was learnt: ``silent()`` for
    ``PROBE_S`` after one that reached nobody (the next message then probes again), over as soon as one does."""

    def __init__(self) -> None:
        self.heard: int | None = None
        self.at = 0.0

    def silent(self) -> bool:
        return self.heard == 0 and time.monotonic() - self.at < PROBE_S

    def note(self, heard: int | None) -> None:
        if heard is not None:
            self.heard, self.at = heard, time.monotonic()


def receivers(producer: Any) -> int | None:
    """How many subscribers a producer's last fanout publish reached; None where the transport cannot tell."""
    return getattr(getattr(producer, "channel", None), "fanout_receivers", None)
