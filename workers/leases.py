"""Leases: what keeps a worker's jobs its own while it lives, and returns them when it dies.

Leases (the SQS ``ChangeMessageVisibility`` pattern on kombu's Redis transport). A message a worker takes
sits in kombu's ``unacked`` hash, indexed by time in ``unacked_index``; every worker sweeps that index every
``lease_s / 4`` and puts back in its queue any message older than ``lease_s`` (``rerankq.keys
.celery_config``). ``LeaseKeeper`` renews, every ``lease_s / 3``, the index entry of every message this
worker holds, so a live worker's jobs are never put back however long a round takes, and a dead or frozen
worker's jobs are back in their queue about one lease after its last renewal. Renewal only updates entries
that still exist (``ZADD XX``): a worker that wakes after its jobs were put back cannot reclaim them, and
``rerankq.jobs``' fencing refuses whatever it then tries to write. It is one command per beat whatever the
worker holds, sent with the beat's other writes (the registry's, the reaper's script) in one round trip.

What leases cannot cover (a message lost between kombu's ``BRPOP`` and its write to ``unacked``, or never
published) is ``rerankq.worker.reaper``'s; what a worker may take is ``rerankq.worker.intake``'s.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Sequence
from typing import Any, Protocol

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


class BeatPart(Protocol):
    """Something done on every beat, in the beat's one pipelined round trip (the registry, the reaper)."""

    def add(self, pipe: Any) -> int:
        """Queue this beat's commands on ``pipe`` (a non-transactional pipeline); returns how many."""

    def done(self, replies: list[Any]) -> None:
        """Their replies, in order; a failed command's reply is its exception."""


def run_beat(client: redis.Redis, parts: Sequence[BeatPart]) -> None:
    """One beat of ``parts``: their commands in one round trip, then each part's replies (a part that fails is
    logged; the others still get theirs)."""
    pipe = client.pipeline(transaction=False)
    counts = [part.add(pipe) for part in parts]
    replies = pipe.execute(raise_on_error=False) if sum(counts) else []
    at = 0
    for part, count in zip(parts, counts, strict=True):
        try:
            part.done(replies[at:at + count])
        except Exception as exc:  # Redis blinked: the part runs again on the next beat
            logger.warning("beat of %s failed: %s", type(part).__name__, exc)
        at += count


class Renewal:
    """The beat's lease renewal: one ``ZADD XX`` of every message this worker holds, whatever it holds."""

    def __init__(self, metrics: Metrics) -> None:
        self.metrics = metrics

    def add(self, pipe: Any) -> int:
        tags = held_tags()
        if not tags:
            return 0
        pipe.zadd(keys.UNACKED_INDEX, dict.fromkeys(tags, time.time()), xx=True, ch=True)
        return 1

    def done(self, replies: list[Any]) -> None:
        for reply in replies:
            if isinstance(reply, Exception):
                raise reply
            self.metrics.leases_renewed.inc(int(reply or 0))


class LeaseKeeper:
    """Every ``lease_s / 3`` seconds (or more often, with ``interval``), in a daemon thread: one beat, one round
    trip to Redis, with this worker's lease renewal and the ``parts`` (the worker registry, the reaper)."""

    def __init__(self, settings: Settings, client: redis.Redis, metrics: Metrics,
                 parts: Sequence[BeatPart] = (), interval: float | None = None) -> None:
        self.settings = settings
        self.redis = client
        self.parts: list[BeatPart] = [Renewal(metrics), *parts]
        self.interval = min(settings.lease_s / 3, interval or settings.lease_s)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="rerankq-leases", daemon=True)

    def start(self) -> LeaseKeeper:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()

    def _run(self) -> None:
        while not self._stop.wait(self.interval):
            try:
                run_beat(self.redis, self.parts)
            except Exception as exc:  # Redis blinked: renew on the next beat (a third of a lease later)
                logger.warning("lease renewal failed: %s", exc)
