"""Celery's ``task-sent`` events of one submit call, published as one message, and only while something listens.

Flower shows a job from the moment it is queued because the producer sends a ``task-sent`` event with each
message (``task_send_sent_event``). Celery publishes each one on its own: one Redis ``PUBLISH`` per job. The
SDK hands ``send_task`` this dispatcher instead, which keeps the events of a submit call and publishes them
together as one ``task.multi`` message (the form a worker's buffered task events take, which Flower and every
Celery event receiver read as the list of events it holds): one ``PUBLISH`` per call of up to ``CHUNK`` jobs.

Events go out on Redis pub/sub, where one nobody subscribed to is gone anyway. ``PUBLISH`` replies how many
subscribers heard it (``rerankq.fanout``); after a call whose events reached nobody, the client's next calls
send none for ``PROBE_S`` (1 s) (the next call after that probes again): a monitor that subscribes sees the jobs
queued from at most ``PROBE_S`` (1 s) after it did.
"""

from __future__ import annotations

from typing import Any

from celery import Celery
from celery.events.dispatcher import EventDispatcher
from celery.events.event import Event

from rerankq.fanout import Audience, receivers


class SentEvents(EventDispatcher):
    """Buffers the ``task-sent`` events Celery publishes through it; ``flush()`` sends them as one message, or
    drops them while nothing listens (``audience``)."""

    audience: Audience

    def publish(self, type: str, fields: dict[str, Any], producer: Any, blind: bool = False,
                Event: Any = Event, **kwargs: Any) -> None:
        self.send(type, blind=blind, Event=Event, **fields)  # buffered: ``buffer_group`` holds every task event

    def flush(self, errors: bool = True, groups: bool = True) -> None:
        if self.audience.silent():
            with self.mutex:
                for events in self._group_buffer.values():
                    events.clear()
            return
        super().flush(errors, groups)
        self.audience.note(receivers(self.producer))


def sent_events(app: Celery, channel: Any, jobs: int, audience: Audience) -> SentEvents:
    """A dispatcher for one submit call of ``jobs`` messages on ``channel`` (the producer's)."""
    events = SentEvents(channel=channel, app=app, buffer_group=["task"], buffer_limit=jobs + 1)
    events.audience = audience
    return events
