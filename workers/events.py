"""Task events that reach Flower, every one.

With an event loop, a Celery worker buffers task events and flushes them from the loop. Celery's ``flush``
copies the buffer, publishes the copy, then clears the buffer: an event a pool thread adds while the copy is
being published is dropped. With the threads pool and a large job (its ``task-received`` event carries the
job, so publishing it takes a while) that lost the job's ``task-started`` event, and Flower never saw the
job start. This dispatcher drains the buffer one event at a time instead, so nothing added meanwhile is lost.
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
            super().flush(errors=False, groups=True)


class WorkerEvents(Events):
    """The worker app's events, with the draining dispatcher."""

    dispatcher_cls: Any = "workers.events:DrainingDispatcher"
