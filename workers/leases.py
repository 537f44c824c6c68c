"""Leases: what keeps a worker's jobs its own while it lives, and returns them when it dies.

Leases (the SQS ``ChangeMessageVisibility`` pattern on kombu's Redis transport). A message a worker takes
sits in kombu's ``unacked`` hash, indexed by time in ``unacked_index``; every worker sweeps that index every
``lease_s / 4`` and puts back in its queue any message older than ``lease_s`` (``rerankq.keys
.celery_config``). ``LeaseKeeper`` renews, every ``lease_s / 3``, the index entry of every message this
worker holds, so a live worker's jobs are never put back however long a round takes, and a dead or frozen
worker's jobs are back in their queue about one lease after its last renewal. Renewal only updates entries
that still exist (``ZADD XX``): a worker that wakes after its jobs were put back cannot reclaim them, and
``rerankq.jobs``' fencing refuses whatever it then tries to write.

What leases cannot cover (a message lost between kombu's ``BRPOP`` and its write to ``unacked``, or never
published) is ``rerankq.worker.reaper``'s; what a worker may take is ``rerankq.worker.intake``'s.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable

import redis

from rerankq import keys
from rerankq.settings import Settings
from rerankq.worker.metrics import Metrics

logger = logging.getLogger(__name__)


def held_tags() -> list[str]:
    """Delivery tags of the messages this worker process holds (reserved or running tasks)."""
    from celery.worker import state

    for _ in range(5):  # the set may change while it is copied (another thread)
        try:
            requests = list(state.reserved_requests) + list(state.active_requests)
            break
        except RuntimeError:
            continue
    else:
        return []
    return list({str(r.message.delivery_tag) for r in requests if r.message is not None})


class LeaseKeeper:
    """Renews this worker's leases every ``lease_s / 3`` seconds (or more often, with ``interval``), and runs
    the ``on_beat`` callbacks (the worker registry) on the same beat, in a daemon thread."""

    def __init__(self, settings: Settings, client: redis.Redis, metrics: Metrics,
                 on_beat: list[Callable[[], None]] | None = None, interval: float | None = None) -> None:
        self.settings = settings
        self.redis = client
        self.metrics = metrics
        self.on_beat = on_beat or []  # more things to do on each beat (the worker registry)
        self.interval = min(settings.lease_s / 3, interval or settings.lease_s)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="rerankq-leases", daemon=True)

    def start(self) -> LeaseKeeper:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()

    def renew(self, tags: list[str]) -> int:
        """Push the lease of each held message to now; returns how many were still held."""
        if not tags:
            return 0
        renewed = int(self.redis.zadd(keys.UNACKED_INDEX, dict.fromkeys(tags, time.time()), xx=True, ch=True) or 0)
        self.metrics.leases_renewed.inc(renewed)
        return renewed

    def _run(self) -> None:
        while not self._stop.wait(self.interval):
            try:
                self.renew(held_tags())
                for beat in self.on_beat:
                    beat()
            except Exception as exc:  # Redis blinked: renew on the next beat (a third of a lease later)
                logger.warning("lease renewal failed: %s", exc)
