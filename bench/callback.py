"""What completion callbacks cost: ``python -m bench.callback [--events 2000]``.

On a private Redis and a receiver on loopback (plain HTTP, in this process), it prints:

- Redis CPU per terminal write (``cancel``), with and without a ``callback_url`` (the script that ends the job
  also writes its event to the outbox): ``INFO commandstats``, microseconds per call;
- how many events per second one deliverer sends (``callbacks.concurrency`` 4 and 16);
- the latency from a job's terminal write to the receiver, one job at a time, at the default poll interval.
"""

from __future__ import annotations

import argparse
import json
import statistics
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from rerankq.callbacks import Outbox
from rerankq.cli.cluster import RedisServer
from rerankq.jobstore import JobStore
from rerankq.settings import CallbackSettings, Settings
from rerankq.worker.callbacks import Deliverer


def receiver() -> tuple[ThreadingHTTPServer, list[float]]:
    """A receiver that answers 200 and records each event's age on arrival (seconds)."""
    ages: list[float] = []

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            body = self.rfile.read(int(self.headers["Content-Length"]))
            ages.append(time.time() - json.loads(body)["created_at"])
            self.send_response(200)
            self.send_header("Content-Length", "0")
            self.end_headers()

        def log_message(self, *args: Any) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    server.daemon_threads = True
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server, ages


def terminal_write_cost(store: JobStore, url: str | None, n: int, tag: str) -> float:
    """Redis microseconds per ``cancel`` of a queued 32-document job."""
    ids = [f"{tag}-{i}" for i in range(n)]
    store.create_many([{"job_id": j, "documents": [{}] * 32, "callback_url": url} for j in ids])
    store.redis.config_resetstat()
    for job_id in ids:
        store.cancel(job_id)
    return float(store.redis.info("commandstats")["cmdstat_evalsha"]["usec_per_call"])


def delivery_rate(settings: Settings, store: JobStore, url: str, n: int, concurrency: int) -> float:
    """Events per second one deliverer sends, from a full outbox to an empty one."""
    tuned = settings.model_copy(update={"callbacks": settings.callbacks.model_copy(
        update={"concurrency": concurrency})})
    outbox = Outbox(tuned, store.redis)
    result = {"job_id": "j", "scores": [0.5] * 32, "results": [{"index": i, "relevance_score": 0.5} for i in range(32)]}
    pipe = store.redis.pipeline(transaction=True)
    for i in range(n):
        outbox.enqueue(pipe, url, "job.succeeded", {"job_id": str(i), "result": result})
    pipe.execute()
    t0 = time.perf_counter()
    deliverer = Deliverer(tuned, store.redis).start()
    while outbox.depth():
        time.sleep(0.01)
    seconds = time.perf_counter() - t0
    deliverer.stop()
    return n / seconds


def latency(settings: Settings, store: JobStore, url: str, ages: list[float], jobs: int = 50) -> list[float]:
    """Seconds from each job's terminal write to the receiver, one job every 50 ms."""
    ages.clear()
    deliverer = Deliverer(settings, store.redis).start()
    for i in range(jobs):
        store.create_many([{"job_id": f"lat-{i}", "documents": [{}], "callback_url": url}])
        store.cancel(f"lat-{i}")
        time.sleep(0.05)
    deadline = time.monotonic() + 10
    while len(ages) < jobs and time.monotonic() < deadline:
        time.sleep(0.05)
    deliverer.stop()
    return list(ages)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.callback", description=__doc__)
    parser.add_argument("--events", type=int, default=2000)
    n = parser.parse_args(argv).events
    server, ages = receiver()
    url = f"http://127.0.0.1:{server.server_port}/hook"
    with RedisServer() as redis_server:
        settings = Settings(redis_url=redis_server.url, callbacks=CallbackSettings(
            secret="bench", allow_http=True, allow_private=True))
        store = JobStore(settings)
        for label, target in (("without callback_url", None), ("with callback_url", url)):
            costs = [terminal_write_cost(store, target, n, f"{label[:5]}{rep}") for rep in range(3)]
            print(f"terminal write (cancel), {label}: Redis {min(costs):.1f} us/call (best of 3)")
        outbox = Outbox(settings, store.redis)
        store.redis.delete(outbox.due, outbox.events)  # the cancelled jobs' events: not part of the rate
        for concurrency in (4, 16):
            rate = delivery_rate(settings, store, url, n, concurrency)
            print(f"one deliverer, concurrency {concurrency}: {rate:.0f} events/s to a local receiver")
        seen = latency(settings, store, url, ages)
        print(f"terminal write -> receiver, poll {settings.callbacks.poll_interval_s:g} s: p50 "
              f"{statistics.median(seen) * 1000:.0f} ms, p95 {statistics.quantiles(seen, n=20)[18] * 1000:.0f} ms")
    server.shutdown()


if __name__ == "__main__":
    main()
