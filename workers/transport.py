"""The worker's Redis transport: kombu's, with these changes.

- A queue entry which is not a Celery message (not JSON, not an object, no ``properties``) is moved to the
  dead-letter list instead of killing the worker (kombu would raise in its poller and Celery would stop with
  "Unrecoverable error") or being reported as a lost broker connection (and every job in flight restored and
  scored twice).
- Fanout publishes (Celery's events) keep how many subscribers heard them (``rerankq.fanout``), so that the
  worker's event dispatcher drops task events while nothing listens (``rerankq.worker.events``).
- Acknowledgements made together (a round's jobs end together) are written together, in one round trip.
- Taking is batched: after kombu's ``BRPOP`` returns a message, one ``RPOP`` takes as many more from the same
  queue as the round being formed has room for (the intake gate's ``take_room``), and one round trip records
  them all as held (``unacked``): three round trips for a round's messages instead of two per message.
- Taking a message removes its task id from its queue's pending set (``rerankq.keys.pending_key``) in the
  same step that records it as held, and putting one back adds it again, with the message: the pending set
  is what ``rerankq.worker.reaper`` reads to find messages lost between kombu's ``BRPOP`` and that write.

Selected with Celery's ``broker_transport`` (``rerankq.worker.app.worker_config``); the URL stays ``redis://`` or
``sentinel://``. Producers keep kombu's own transport: they only publish.
"""

from __future__ import annotations

import contextlib
import json
import logging
import threading
import time
from collections.abc import Callable
from typing import Any

from kombu.asynchronous import get_event_loop
from kombu.transport import redis as kombu_redis
from kombu.transport import virtual
from kombu.utils.encoding import bytes_to_str
from kombu.utils.uuid import uuid

from rerankq import keys
from rerankq.fanout import CountingChannel, CountingSentinelChannel

logger = logging.getLogger(__name__)

DLQ_KEY_OPTION = "rerankq_dlq_key"  # transport option: where dead letters go

MAX_TAKE = 256  # entries taken at most after one BRPOP
Taken = tuple[bytes | str, dict[str, Any] | None, str, str | None]  # entry, message, why not one, tag if recorded


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
    """kombu's acknowledgement emulation; taking a message also clears its pending entry (module doc).

    Taking and acknowledging are plain pipelines, not kombu's ``MULTI``/``EXEC``: each command order leaves a
    state the others handle if only a prefix of it runs. Taking writes the lease index first (an index entry
    without its message is dropped by the restore sweep, and the pending entry left behind lets the reaper
    resend); acknowledging deletes the messages before their index entries (an index entry left alone is
    dropped by the sweep; a message left without one would never be restored, nor deleted).

    Acknowledgements are group-committed. Celery runs them on the worker's event loop (``call_soon``), the
    acknowledgements of a round's jobs (which end together) in one pass of the loop; they are collected and
    written in one round trip at the end of that pass (the loop's ``on_tick``, before it polls again). Off the
    loop (a plain kombu consumer) each is written at once. One not yet written when the worker dies is a
    message put back after its lease, whose job's record is already final: the redelivery is refused by its
    fencing."""

    take_room: Callable[[], int] | None = None  # how many messages the worker can take now (its intake gate)

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._acks: list[str] = []  # acknowledged on the loop, not yet removed from ``unacked``
        self._acks_lock = threading.Lock()
        self._recorded: set[str] = set()  # delivery tags the TAKE script recorded as held already

    def recorded(self, delivery_tag: str) -> None:
        """The next ``append`` of this tag has nothing to write: ``TAKE`` wrote it."""
        self._recorded.add(delivery_tag)

    def append(self, message: Any, delivery_tag: str) -> None:
        if delivery_tag in self._recorded:
            self._recorded.discard(delivery_tag)
            virtual.QoS.append(self, message, delivery_tag)
            return
        delivery = message.delivery_info
        exchange, queue = delivery["exchange"], delivery["routing_key"]
        task_id = task_id_of(message._raw)
        with self.channel.conn_or_acquire() as client:
            pipe = client.pipeline(transaction=False)
            pipe.zadd(self.unacked_index_key, {delivery_tag: time.time()})
            pipe.hset(self.unacked_key, delivery_tag, json.dumps([message._raw, exchange, queue]))
            if task_id is not None:
                pipe.zrem(keys.pending_key(queue), task_id)
                if _redelivered(message):  # only a message put back has its copy kept (``_do_restore_message``)
                    pipe.hdel(keys.pending_msg_key(queue), task_id)
            pipe.execute()
        virtual.QoS.append(self, message, delivery_tag)

    def ack(self, delivery_tag: str) -> None:
        virtual.QoS.ack(self, delivery_tag)
        hub = get_event_loop()
        if hub is None or getattr(hub, "_loop_thread", None) != threading.get_ident():
            self._forget([delivery_tag])
            return
        with self._acks_lock:
            self._acks.append(delivery_tag)
        hub.on_tick.add(self._write_acks)  # a set: once per loop; runs after this pass's callbacks

    def reject(self, delivery_tag: str, requeue: bool = False) -> None:
        if requeue:
            super().reject(delivery_tag, requeue=True)  # kombu's: put back under WATCH
            return
        virtual.QoS.ack(self, delivery_tag)
        self._forget([delivery_tag])

    def restore_unacked_once(self, stderr: Any = None) -> Any:
        self._write_acks()  # those collected or left by a failed write, before the channel closes
        return super().restore_unacked_once(stderr)

    def _write_acks(self) -> None:
        """Write the acknowledgements collected, in one round trip. Like kombu's acknowledgement, a failed write
        is logged, not raised (the messages stay held: put back after their lease, their jobs fenced); they are
        tried again with the next acknowledgements."""
        hub = get_event_loop()
        if hub is not None:
            hub.on_tick.discard(self._write_acks)  # until the next acknowledgement
        with self._acks_lock:
            tags, self._acks = self._acks, []
        if not tags:
            return
        try:
            self._forget(tags)
        except self.channel.connection_errors as exc:
            with self._acks_lock:
                self._acks[:0] = tags
            logger.critical("could not acknowledge %d messages (tried again with the next ones): %r", len(tags), exc)

    def _forget(self, tags: list[str]) -> None:
        with self.channel.conn_or_acquire() as client:
            pipe = client.pipeline(transaction=False)
            pipe.hdel(self.unacked_key, *tags)
            pipe.zrem(self.unacked_index_key, *tags)
            pipe.execute()


def _parsed(entry: bytes | str) -> Taken:
    """A raw entry with its message (None if it is none: why), and its delivery tag (None when it has none)."""
    message, reason = as_message(entry)
    tag = message["properties"].get("delivery_tag") if message else None
    return entry, message, reason, tag if isinstance(tag, str) else None


def _redelivered(message: Any) -> bool:
    headers = message._raw.get("headers")
    return bool((message.delivery_info or {}).get("redelivered") or
                (isinstance(headers, dict) and headers.get("redelivered")))


class DeadLetterChannel(CountingChannel):
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
            for entry, message, reason, tag in self._take(bytes_to_str(dest), queue, item):
                if message is None:
                    self._dead_letter(queue, reason, entry)
                    continue
                if tag is not None:
                    self.qos.recorded(tag)
                self.connection._deliver(message, queue)
            return True
        finally:
            self._in_poll = None  # type: ignore[assignment]  # kombu's attribute, untyped
            self._flush_brpop_reauth()

    def _take(self, dest: str, queue: str, item: bytes) -> list[Taken]:
        """The entry BRPOP took and as many more from the same queue as the worker has room for, recorded as held
        as ``PendingQoS.append`` would one by one: one round trip records the first and pops the others (``RPOP``),
        one more records those. Returns (entry, message or None, why not, delivery tag when recorded) per entry,
        in queue order; a message not recorded goes through ``append``, an entry that is none to the dead-letter
        list."""
        room = getattr(self.qos, "take_room", None)
        more = min(max(room() - 1, 0), MAX_TAKE) if room is not None else 0
        first = _parsed(item)
        if not more:
            return [(*first[:3], None)]  # kombu's way: ``append`` records it
        with self.conn_or_acquire() as client:
            pipe = client.pipeline(transaction=False)
            pipe.rpop(dest, more)
            self._hold(pipe, queue, [first])
            popped = pipe.execute()[0] or []
            rest = [_parsed(entry) for entry in popped]
            if self._hold(pipe, queue, rest):
                pipe.execute()
        return [first, *rest]

    def _hold(self, pipe: Any, queue: str, taken: list[Taken]) -> bool:
        """Queue the writes that record these messages as held on ``pipe`` (the lease index first, see
        ``PendingQoS``; until they run the entries are in no list, and their pending entries let the reaper send
        them again if the worker dies); False when none is a message to record."""
        now, index, held, ids, copies = time.time(), {}, {}, [], []
        for _, message, _, tag in taken:
            if message is None or tag is None:
                continue
            delivery = message["properties"]["delivery_info"]
            index[tag] = now
            held[tag] = json.dumps([message, delivery.get("exchange"), delivery.get("routing_key")])
            task_id = task_id_of(message)
            if task_id is not None:
                ids.append(task_id)
                if delivery.get("redelivered") or message.get("headers", {}).get("redelivered"):
                    copies.append(task_id)
        if not index:
            return False
        pipe.zadd(self.unacked_index_key, index)
        pipe.hset(self.unacked_key, mapping=held)
        if ids:
            pipe.zrem(keys.pending_key(queue), *ids)
        if copies:
            pipe.hdel(keys.pending_msg_key(queue), *copies)
        return True

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


class DeadLetterSentinelChannel(DeadLetterChannel, CountingSentinelChannel):
    """The same, for ``sentinel://`` URLs."""


class Transport(kombu_redis.Transport):
    Channel = DeadLetterChannel


class SentinelTransport(kombu_redis.SentinelTransport):
    Channel = DeadLetterSentinelChannel
