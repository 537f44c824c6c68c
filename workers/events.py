"""Task events that reach Flower, every one, and that cost Redis next to nothing while nobody listens.

With an event loop, a Celery worker buffers task events per group and flushes them from the loop, about one
``PUBLISH`` per job. Two changes:

- Nothing is lost in a flush. Celery's ``flush`` publishes a group's buffer list and then empties it
  (``events[:] = []``): an event that a pool thread appends while the list is being published is dropped.
  With the threads pool and a large job (its ``task-received`` event carries the job, so publishing takes a
  while) that lost the job's ``task-started`` event, and Flower never saw the job start. This dispatcher
  publishes a copy and removes only what it sent.
- Held while nobody listens. Events go out on Redis pub/sub, and ``PUBLISH`` replies how many subscribers
  heard it (``rerankq.worker.transport`` keeps that number). After a flush that reached nobody, task events are
  held and sent as one message when ``PROBE_S`` has passed or ``HOLD_MAX`` are held (that message probes
  again); and as soon as any other event of this worker (its heartbeat, every 2 s) reaches a subscriber, the
  held events go out at once. So a monitor that subscribes (Flower) gets every task event from then on, the
  first ones at most a heartbeat late, and a worker nobody watches publishes one message per ``PROBE_S``
  instead of one per job. Nothing held is dropped.
"""

from __future__ import annotations

import time
from typing import Any

from celery.app.events import Events
from celery.events.dispatcher import EventDispatcher
from celery.events.event import Event
from celery.utils.time import utcoffset

PROBE_S = 5.0  # with nobody listening, held task events go out (as one message) at most this often
HOLD_MAX = 1000  # ... or once this many are held


class DrainingDispatcher(EventDispatcher):
    """``EventDispatcher`` whose ``flush`` loses no event buffered while it runs, and holds task events while
    nobody listens (module doc)."""

    _heard: int | None = None  # subscribers the last flush of a buffered group reached; None: not known
    _flushed_at = 0.0  # when that flush was (monotonic)

    def publish(self, type: str, fields: dict[str, Any], producer: Any, blind: bool = False,
                Event: Any = Event, **kwargs: Any) -> Any:
        """Celery's, and when this event reached a subscriber, the task events held so far go out with it."""
        clock = None if blind else self.clock.forward()
        event = Event(type, hostname=self.hostname, utcoffset=utcoffset(), pid=self.pid, clock=clock, **fields)
        with self.mutex:
            result = self._publish(event, producer, routing_key=type.replace("-", "."), **kwargs)
            if self._heard == 0 and _receivers(producer) and any(self._group_buffer.values()):
                self._send_groups()  # someone subscribed since: they get what was held, now
            return result

    def flush(self, errors: bool = True, groups: bool = True) -> None:
        if errors:
            with self.mutex:
                while self._outbound_buffer:
                    event, routing_key, _ = self._outbound_buffer.popleft()
                    self._publish(event, self.producer, routing_key)
        if groups:
            with self.mutex:
                if not self._holding():
                    self._send_groups()

    def _holding(self) -> bool:
        """Whether buffered task events wait: the last flush reached nobody, a moment ago, and few are held."""
        if self._heard != 0 or time.monotonic() - self._flushed_at >= PROBE_S:
            return False
        return sum(len(events) for events in self._group_buffer.values()) < HOLD_MAX

    def _send_groups(self) -> None:
        """Publish each group's buffer as one message (under the mutex); remember whether anyone heard."""
        for group, events in self._group_buffer.items():
            sent = events[:]  # a copy; appends from other threads land after it
            if sent:
                self._publish(sent, self.producer, f"{group}.multi")
                del events[:len(sent)]
                self._heard, self._flushed_at = _receivers(self.producer), time.monotonic()


def _receivers(producer: Any) -> int | None:
    """How many subscribers the producer's last fanout publish reached; None where the transport cannot tell."""
    return getattr(getattr(producer, "channel", None), "fanout_receivers", None)


class WorkerEvents(Events):
    """The worker app's events, with the draining dispatcher."""

    dispatcher_cls: Any = "rerankq.worker.events:DrainingDispatcher"
