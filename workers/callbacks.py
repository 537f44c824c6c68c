"""Delivering completion callbacks: ``Deliverer`` runs in every worker (daemon threads, never in the way of
scoring), and on its own with ``python -m rerankq.worker.callbacks``.

One thread claims due events from the outbox (``rerankq.callbacks.Outbox``: each claim hides the event for
``callbacks.visibility_s``) as long as one of ``callbacks.concurrency`` delivery threads is free, so a receiver
that hangs holds at most that many threads and nothing else. Each attempt checks the URL again (scheme,
allow-list, every address the host resolves to: DNS may have changed since submit), connects to the address
it checked, and POSTs the signed body. A 2xx answer delivers the event; anything else (an error status, a
redirect, a timeout, a reset) is a failed attempt, retried after ``callbacks.backoff_s`` doubling per attempt
(with jitter, at most ``callbacks.max_backoff_s``), until ``callbacks.max_attempts`` attempts or
``callbacks.max_age_s`` after the job ended; then the event is dropped with its last error. A URL the policy
refuses is dropped at once: retrying cannot help. A deliverer that dies mid-POST leaves its claims to come back
after the visibility timeout: delivery is at least once, and receivers dedupe on the event id.
"""

from __future__ import annotations

import argparse
import logging
import queue
import random
import signal
import threading
import time

import redis

from rerankq import callbacks
from rerankq.callbacks import CallbackEvent, Outbox, check_target
from rerankq.errors import CallbackRefused
from rerankq.netguard import pinned_connection
from rerankq.settings import Settings
from rerankq.worker.metrics import CallbackMetrics

logger = logging.getLogger(__name__)
MAX_RESPONSE_BYTES = 64 * 1024  # of a receiver's answer, read and discarded


class Deliverer:
    """Claims and delivers callback events. ``start()`` its threads, ``stop()`` them; ``deliver`` one event."""

    def __init__(self, settings: Settings, client: redis.Redis, metrics: CallbackMetrics | None = None) -> None:
        self.settings = settings
        self.policy = settings.callbacks
        self.outbox = Outbox(settings, client)
        self.metrics = metrics
        self._secret = self.policy.secret.get_secret_value()
        self._work: queue.Queue[CallbackEvent] = queue.Queue()
        self._busy = 0  # claimed and not yet settled
        self._slots = threading.Condition()  # guards _busy; notified when a delivery thread frees up
        self._stop = threading.Event()
        self._threads = [threading.Thread(target=self._claim_loop, name="rerankq-callbacks", daemon=True)]
        self._threads += [threading.Thread(target=self._deliver_loop, name=f"rerankq-callback-{i}", daemon=True)
                          for i in range(self.policy.concurrency)]

    def start(self) -> Deliverer:
        if not self._secret:
            logger.warning("callbacks.secret (RERANKQ_CALLBACKS__SECRET) is not set: this process delivers no "
                           "callbacks; they wait in the outbox for a deliverer that has it")
            return self
        for thread in self._threads:
            thread.start()
        return self

    def stop(self, grace_s: float = 5.0) -> None:
        """Stop claiming, and give the events already claimed ``grace_s`` seconds to be delivered; any still in
        flight then are abandoned and come back to a deliverer after the visibility timeout."""
        self._stop.set()
        deadline = time.monotonic() + grace_s
        for thread in self._threads:
            if thread.is_alive():
                thread.join(max(deadline - time.monotonic(), 0))

    # claiming ------------------------------------------------------------------------------------
    def _claim_loop(self) -> None:
        while not self._stop.is_set():
            with self._slots:  # all threads busy: claim again as soon as one is free, not a poll later
                self._slots.wait_for(lambda: self._busy < self.policy.concurrency, self.policy.poll_interval_s)
            try:
                claimed = self.claim()
            except Exception as exc:  # Redis blinked: look again after the poll interval
                logger.warning("callback outbox unreachable: %s", exc)
                claimed = 0
            if not claimed:
                self._stop.wait(self.policy.poll_interval_s)

    def claim(self) -> int:
        """Claim as many due events as there are free delivery threads; returns how many."""
        with self._slots:
            free = self.policy.concurrency - self._busy
        if free <= 0:
            return 0
        events = self.outbox.claim(free)
        with self._slots:
            self._busy += len(events)
        for event in events:
            self._work.put(event)
        return len(events)

    def _deliver_loop(self) -> None:
        while True:
            try:
                event = self._work.get(timeout=0.2)
            except queue.Empty:
                if self._stop.is_set():
                    return
                continue
            try:
                self.deliver(event)
            except Exception:  # a bug must not kill the thread; the claim comes back after its visibility
                logger.exception("delivering callback %s failed", event.id)
            finally:
                with self._slots:
                    self._busy -= 1
                    self._slots.notify()

    # delivering ----------------------------------------------------------------------------------
    def deliver(self, event: CallbackEvent) -> None:
        """One attempt, settled in the outbox: delivered, due again later, or dropped."""
        try:
            status = self.post(event)
        except CallbackRefused as exc:
            self._drop(event, f"refused: {exc}", "refused")
            return
        except Exception as exc:  # timeouts, resets, TLS, DNS, a URL http.client rejects: a failed attempt
            self._failed(event, _describe(exc))
            return
        if not 200 <= status < 300:
            self._failed(event, f"HTTP {status}")
            return
        self.outbox.delivered(event)
        if self.metrics:
            self.metrics.delivered.inc()
        logger.info("callback %s (%s) delivered to %s on attempt %d", event.id, event.type, event.url,
                    event.attempts)

    def post(self, event: CallbackEvent) -> int:
        """POST the signed event to its (checked) URL; returns the HTTP status."""
        target = check_target(event.url, self.policy)
        body = event.body()
        headers = {"Content-Type": "application/json", "User-Agent": "rerankq-callbacks",
                   callbacks.SIGNATURE_HEADER: callbacks.sign(self._secret, body),
                   callbacks.EVENT_ID_HEADER: event.id, callbacks.EVENT_TYPE_HEADER: event.type,
                   callbacks.ATTEMPT_HEADER: str(event.attempts)}
        ip = target.ip or target.host  # check_target always resolves it
        conn = pinned_connection(target.scheme, target.host, target.port, ip, self.policy.timeout_s)
        try:
            conn.request("POST", target.path, body=body, headers=headers)
            response = conn.getresponse()
            response.read(MAX_RESPONSE_BYTES)
            return response.status
        finally:
            conn.close()

    def _failed(self, event: CallbackEvent, error: str) -> None:
        if self.metrics:
            self.metrics.failed.inc()
        if event.attempts >= self.policy.max_attempts:
            self._drop(event, f"gave up after {event.attempts} attempts: {error}", "attempts")
            return
        if time.time() - event.created_at >= self.policy.max_age_s:
            self._drop(event, f"gave up {self.policy.max_age_s:g} s after the event: {error}", "age")
            return
        delay = self.backoff(event.attempts)
        logger.info("callback %s to %s: attempt %d failed (%s); next in %.1f s", event.id, event.url,
                    event.attempts, error, delay)
        self.outbox.retry(event, error, delay)

    def backoff(self, attempts: int) -> float:
        """Delay after the ``attempts``-th failed attempt: doubling from ``backoff_s``, jittered, capped."""
        delay = self.policy.backoff_s * 2 ** max(attempts - 1, 0) * random.uniform(1.0, 1.25)
        return min(delay, self.policy.max_backoff_s)

    def _drop(self, event: CallbackEvent, reason: str, kind: str) -> None:
        self.outbox.drop(event, reason)
        if self.metrics:
            self.metrics.dropped(kind)
        logger.warning("callback %s (%s) to %s dropped: %s", event.id, event.type, event.url, reason)


def _describe(exc: BaseException) -> str:
    if isinstance(exc, TimeoutError):
        return "timed out"
    return f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__


def main(argv: list[str] | None = None) -> int:
    """``python -m rerankq.worker.callbacks``: a deliverer on its own (settings from ``RERANKQ_*``), until SIGTERM or
    Ctrl-C. Serves its metrics on ``RERANKQ_METRICS_PORT`` when set."""
    from prometheus_client import CollectorRegistry, start_http_server

    from rerankq.connections import redis_client
    from rerankq.worker.metrics import OutboxDepth

    argparse.ArgumentParser(prog="python -m rerankq.worker.callbacks", description=main.__doc__).parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    settings = Settings()
    if not settings.callbacks.secret.get_secret_value():
        logger.error("set RERANKQ_CALLBACKS__SECRET: callbacks are signed with it")
        return 4
    client = redis_client(settings)
    registry = CollectorRegistry()
    metrics = CallbackMetrics(registry, "-")
    registry.register(OutboxDepth(client, Outbox(settings, client).due))
    if settings.metrics_port:
        start_http_server(settings.metrics_port, registry=registry)
    deliverer = Deliverer(settings, client, metrics).start()
    stop = threading.Event()
    for signum in (signal.SIGTERM, signal.SIGINT):
        signal.signal(signum, lambda *_: stop.set())
    logger.info("delivering callbacks from %s", deliverer.outbox.due)
    stop.wait()
    deliverer.stop()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
