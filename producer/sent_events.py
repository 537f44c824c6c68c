"""Celery's ``task-sent`` events of one submit call, published as one message.

Flower shows a job from the moment it is queued because the producer sends a ``task-sent`` event with each
message (``task_send_sent_event``). Celery publishes each one on its own: one Redis ``PUBLISH`` per job. The
SDK hands ``send_task`` this dispatcher instead, which keeps the events of a submit call and publishes them
together as one ``task.multi`` message (the form a worker's buffered task events take, which Flower and every
Celery event receiver read as the list of events it holds): one ``PUBLISH`` per call of up to ``CHUNK`` jobs.
"""

from __future__ import annotations

from typing import Any

from celery import Celery
from celery.events.dispatcher import EventDispatcher
from celery.events.event import Event


class SentEvents(EventDispatcher):
    """Buffers the ``task-sent`` events Celery publishes through it; ``flush()`` sends them as one message."""

    def publish(self, type: str, fields: dict[str, Any], producer: Any, blind: bool = False,
                Event: Any = Event, **kwargs: Any) -> None:
        self.send(type, blind=blind, Event=Event, **fields)  # buffered: ``buffer_group`` holds every task event


def sent_events(app: Celery, channel: Any, jobs: int) -> SentEvents:
    """A dispatcher for one submit call of ``jobs`` messages on ``channel`` (the producer's)."""
    return SentEvents(channel=channel, app=app, buffer_group=["task"], buffer_limit=jobs + 1)
