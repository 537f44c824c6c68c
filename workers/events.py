"""Task events that reach Flower, every one while something listens, and cost Redis next to nothing while
nothing does.

With an event loop, a Celery worker buffers task events per group and flushes them from the loop, about two
``PUBLISH`` per job. Two changes:

- Nothing is lost in a flush. Celery's ``flush`` publishes a group's buffer list and then empties it
  (``events[:] = []``): an event that a pool thread appends while the list is being published is dropped.
  With the threads pool and a large job (its ``task-received`` event carries the job, so publishing takes a
  while) that lost the job's ``task-started`` event, and Flower never saw the job start. This dispatcher
  publishes a copy and removes only what it sent.
- Not sent while nobody listens. Events go out on Redis pub/sub, where an event nobody subscribed to is gone
  anyway, and ``PUBLISH`` replies how many subscribers heard it (``rerankq.worker.transport`` keeps that
  number). After a flush that reached nobody, buffered task events are dropped instead of published until
  ``PROBE_S`` (1 s) has passed (the next flush probes again), or until any event of this worker (its heartbeat,
  every 2 s) reaches a subscriber. A monitor that subscribes (Flower) gets every task event from at most
  ``PROBE_S`` (1 s) after it subscribed; a worker nobody watches publishes one task-event message per ``PROBE_S``
  instead of two per job. Nothing is held: there is no backlog to send at shutdown or after a reconnect.
"""

from __future__ import annotations

from typing import Any

from celery.app.events import Events
from celery.events.dispatcher import EventDispatcher
from celery.events.event import Event

from rerankq.fanout import Audience, receivers


class DrainingDispatcher(EventDispatcher):
    """``EventDispatcher`` whose ``flush`` loses no event buffered while it runs, and which drops task events
    while nobody listens (module doc)."""

    _audience: Audience | None = None  # who heard this dispatcher's last event message

    @property
    def audience(self) -> Audience:
        if self._audience is None:
            self._audience = Audience()
        return self._audience

    def publish(self, type: str, fields: dict[str, Any], producer: Any, blind: bool = False,
                Event: Any = Event, **kwargs: Any) -> Any:
        """Celery's; an event that reached a subscriber ends a silence at once."""
        result = super().publish(type, fields, producer, blind=blind, Event=Event, **kwargs)
        heard = receivers(producer)
        if heard:
            self.audience.note(heard)
        return result

    def flush(self, errors: bool = True, groups: bool = True) -> None:
        if errors:
            with self.mutex:
                while self._outbound_buffer:
                    event, routing_key, _ = self._outbound_buffer.popleft()
                    self._publish(event, self.producer, routing_key)
        if groups:
            with self.mutex:
                silent = self.audience.silent()
                for group, events in self._group_buffer.items():
                    sent = events[:]  # a copy; appends from other threads land after it
                    if sent and not silent:
                        self._publish(sent, self.producer, f"{group}.multi")
                        self.audience.note(receivers(self.producer))
                    del events[:len(sent)]


class WorkerEvents(Events):
    """The worker app's events, with the draining dispatcher."""

    dispatcher_cls: Any = "rerankq.worker.events:DrainingDispatcher"
