"""Task events that reach Flower, every one.

With an event loop, a Celery worker buffers task events per group and flushes them from the loop. Celery's
``flush`` publishes a group's buffer list and then empties it (``events[:] = []``): an event that a pool
thread appends while the list is being published is dropped. With the threads pool and a large job (its
``task-received`` event carries the job, so publishing takes a while) that lost the job's ``task-started``
event, and Flower never saw the job start. This dispatcher publishes a copy and removes only what it sent.
"""

from __future__ import annotations

from typing import Any

from celery.app.events import Events
from celery.events.dispatcher import EventDispatcher


class DrainingDispatcher(EventDispatcher):
    """``EventDispatcher`` whose ``flush`` loses no event buffered while it runs."""

    def flush(self, errors: bool = True, groups: bool = True) -> None:
        if errors:
            with self.mutex:
                while self._outbound_buffer:
                    event, routing_key, _ = self._outbound_buffer.popleft()
                    self._publish(event, self.producer, routing_key)
        if groups:
            with self.mutex:
                for group, events in self._group_buffer.items():
                    sent = events[:]  # a copy; appends from other threads land after it
                    if sent:
                        self._publish(sent, self.producer, f"{group}.multi")
                        del events[:len(sent)]


class WorkerEvents(Events):
    """The worker app's events, with the draining dispatcher."""

    dispatcher_cls: Any = "rerankq.worker.events:DrainingDispatcher"
