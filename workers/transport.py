"""The worker's Redis transport: kombu's, with two changes.

- A queue entry which is not a Celery message (not JSON, not an object, no ``properties``) is moved to the
  dead-letter list instead of killing the worker (kombu would raise in its poller and Celery would stop with
  "Unrecoverable error") or being reported as a lost broker connection (and every job in flight restored and
  scored twice).
- Taking a message removes its task id from its queue's pending set (``rerankq.keys.pending_key``) in the
  same round trip that records it as held (``unacked``), and putting one back adds it again, with the
  message: the pending set is what ``rerankq.worker.reaper`` reads to find messages lost between kombu's ``BRPOP``
  and that write.

Selected with Celery's ``broker_transport`` (``rerankq.worker.app.worker_config``); the URL stays ``redis://`` or
``sentinel://``. Producers keep kombu's own transport: they only publish.
"""

from __future__ import annotations

import contextlib
import json
import logging
import time
from typing import Any

from kombu.transport import redis as kombu_redis
from kombu.transport import virtual
from kombu.utils.encoding import bytes_to_str
from kombu.utils.uuid import uuid

from rerankq import keys

logger = logging.getLogger(__name__)

DLQ_KEY_OPTION = "rerankq_dlq_key"  # transport option: where dead letters go


def as_message(item: bytes | str) -> tuple[dict[str, Any] | None, str]:
    """A raw queue entry → (the message, "") or (None, why it is not one)."""
    try:
        message = json.loads(bytes_to_str(item))
    except ValueError as exc:
        return None, f"not JSON ({exc})"
    if not isinstance(message, dict):
        return None, f"not a Celery message (a JSON {type(message).__name__})"
    properties = message.get("properties")
    if not isinstance(properties, dict) or not isinstance(properties.get("delivery_info"), dict):
        return None, "not a Celery message (no properties.delivery_info)"
    if "body" not in message or not isinstance(message.get("headers", {}), dict):
        return None, "not a Celery message (no body or headers)"
    return message, ""


def dead_letter(client: Any, key: str, queue: str, reason: str, raw: str, kind: str = "entry") -> None:
    """Append one entry to the dead-letter list (``rerankq dlq list`` reads it). ``kind`` is ``entry`` (a raw
    queue entry, put back as it was on redrive) or ``message`` (a Celery message whose arguments were wrong:
    ``raw`` holds its task id, args and kwargs, sent again on redrive)."""
    entry = {"kind": kind, "queue": queue, "reason": reason, "raw": raw, "at": time.time()}
    client.rpush(key, json.dumps(entry))


def task_id_of(message: dict[str, Any]) -> str | None:
    """The Celery task id of a raw message (protocol 2 headers, or protocol 1 body)."""
    headers = message.get("headers")
    task_id = headers.get("id") if isinstance(headers, dict) else None
    return None if task_id is None else str(task_id)


class PendingQoS(kombu_redis.QoS):
    """kombu's acknowledgement emulation; taking a message also clears its pending entry (module doc)."""

    def append(self, message: Any, delivery_tag: str) -> None:
        delivery = message.delivery_info
        exchange, queue = delivery["exchange"], delivery["routing_key"]
        task_id = task_id_of(message._raw)
        with self.pipe_or_acquire() as pipe:
            pipe.zadd(self.unacked_index_key, {delivery_tag: time.time()})
            pipe.hset(self.unacked_key, delivery_tag, json.dumps([message._raw, exchange, queue]))
            if task_id is not None:
                pipe.zrem(keys.pending_key(queue), task_id)
                pipe.hdel(keys.pending_msg_key(queue), task_id)
            pipe.execute()
        virtual.QoS.append(self, message, delivery_tag)


class DeadLetterChannel(kombu_redis.Channel):
    """kombu's Redis channel with malformed entries dead-lettered and pending sets kept (see the module doc)."""

    QoS = PendingQoS

    def _brpop_read(self, **options: Any) -> bool:
        try:
            try:
                reply = self.client.parse_response(self.client.connection, "BRPOP", **options)
            except self.connection_errors:
                self.client.connection.disconnect()  # reconnect on the next iteration
                raise
            if not reply:
                raise kombu_redis.Empty()
            dest, item = reply
            queue = bytes_to_str(dest).rsplit(self.sep, 1)[0]
            self._queue_cycle.rotate(queue)
            message, reason = as_message(item)
            if message is None:
                self._dead_letter(queue, reason, item)
            else:
                self.connection._deliver(message, queue)
            return True
        finally:
            self._in_poll = None  # type: ignore[assignment]  # kombu's attribute, untyped
            self._flush_brpop_reauth()

    def _do_restore_message(self, payload: Any, exchange: str, routing_key: str, pipe: Any,
                            leftmost: bool = False) -> None:
        """Put a message back in its queue under a new delivery tag. kombu keeps the tag, and ``unacked`` is
        keyed by it: a worker presumed dead that wakes up (SIGSTOP, then SIGCONT) acknowledges its refused
        attempt by that tag, which would delete the *next* holder's entry, so that when the next holder dies
        too, nothing ever restores the job (it stays running for good)."""
        with contextlib.suppress(KeyError, TypeError):
            payload["properties"]["delivery_tag"] = uuid()
        super()._do_restore_message(payload, exchange, routing_key, pipe, leftmost)
        task_id = task_id_of(payload)
        if task_id is not None:
            pipe.zadd(keys.pending_key(routing_key), {task_id: time.time()})
            pipe.hset(keys.pending_msg_key(routing_key), task_id, json.dumps(payload))

    def _dead_letter(self, queue: str, reason: str, item: bytes | str) -> None:
        key = self.connection.client.transport_options.get(DLQ_KEY_OPTION, "rerankq:dlq")
        logger.error("queue %s: an entry that is not a rerank message was moved to %s: %s", queue, key, reason)
        with self.conn_or_acquire() as client:
            dead_letter(client, key, queue, reason, bytes_to_str(item))


class DeadLetterSentinelChannel(DeadLetterChannel, kombu_redis.SentinelChannel):
    """The same, for ``sentinel://`` URLs."""


class Transport(kombu_redis.Transport):
    Channel = DeadLetterChannel


class SentinelTransport(kombu_redis.SentinelTransport):
    Channel = DeadLetterSentinelChannel
