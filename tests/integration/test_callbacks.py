"""Completion callbacks end to end: a real worker process (fake scorer) on the private Redis delivers signed
events to a real HTTP receiver on loopback; retries, crashes, refusals, cancel and expiry."""

from __future__ import annotations

import itertools
import json
import os
import signal
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest
import redis

from rerankq.callbacks import Outbox
from rerankq.cli.cluster import RedisServer, S3Server, stop_process
from rerankq.client import RerankClient, SignatureError, verify_signature
from rerankq.errors import InvalidRequest
from rerankq.settings import CallbackSettings, Settings
from rerankq.worker.callbacks import Deliverer
from rerankq.worker.metrics import Metrics
from tests.integration.conftest import WorkerProcess, start_worker, stop_worker, wait_for
from tests.servers import serving

SECRET = "whsec_integration"
ANY = ["*"]
OPEN = CallbackSettings(secret=SECRET, allow_http=True, allow_private=True, allowed_hosts=ANY)  # receiver: loopback
CALLBACK_ENV = {"RERANKQ_CALLBACKS__SECRET": SECRET, "RERANKQ_CALLBACKS__ALLOW_HTTP": "true",
                "RERANKQ_CALLBACKS__ALLOWED_HOSTS": "*",
                "RERANKQ_CALLBACKS__ALLOW_PRIVATE": "true", "RERANKQ_CALLBACKS__BACKOFF_S": "0.2",
                "RERANKQ_CALLBACKS__POLL_INTERVAL_S": "0.05", "RERANKQ_CALLBACKS__TIMEOUT_S": "20"}


@dataclass
class Delivery:
    at: float
    headers: dict[str, str]
    body: bytes

    @property
    def event(self) -> dict[str, Any]:
        event: dict[str, Any] = json.loads(self.body)
        return event


class Receiver:
    """A webhook receiver on loopback: records every POST, answers ``statuses`` first (then 200), and holds
    requests while ``hold`` is set (until ``release``)."""

    def __init__(self) -> None:
        self.deliveries: list[Delivery] = []
        self.statuses: list[int] = []
        self.hold, self.release = threading.Event(), threading.Event()
        self.lock = threading.Lock()
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers["Content-Length"]))
                with receiver.lock:
                    receiver.deliveries.append(Delivery(time.time(), dict(self.headers), body))
                    status = receiver.statuses.pop(0) if receiver.statuses else 200
                if receiver.hold.is_set():
                    receiver.release.wait(60)
                try:
                    self.send_response(status)
                    self.send_header("Content-Length", "0")
                    self.end_headers()
                except OSError:  # the deliverer is gone (killed mid-POST)
                    pass

            def log_message(self, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.server.server_port}/hooks/rerank"

    def wait(self, count: int, timeout: float = 30) -> list[Delivery]:
        wait_for(lambda: len(self.deliveries) >= count, timeout, f"{count} callbacks at the receiver")
        return list(self.deliveries)


@pytest.fixture()
def receiver() -> Iterator[Receiver]:
    r = Receiver()
    with serving(r.server):
        yield r
    r.release.set()


@pytest.fixture(scope="module")
def cb_worker(redis_server: RedisServer, s3_server: S3Server,
              tmp_path_factory: pytest.TempPathFactory) -> Iterator[WorkerProcess]:
    worker = start_worker("fake:hash", redis_server.url, s3_server.url, tmp_path_factory.mktemp("cb-worker"),
                          RERANKQ_BATCHES__PART_INTERVAL_S="0.5", **CALLBACK_ENV)
    yield worker
    stop_worker(worker)


def client_for(settings: Settings, callbacks: CallbackSettings = OPEN) -> RerankClient:
    return RerankClient(Settings(redis_url=settings.redis_url, s3_endpoint_url=settings.s3_endpoint_url,
                                 queue_prefix=settings.queue_prefix, model="fake:hash", callbacks=callbacks))


def verified(delivery: Delivery) -> dict[str, Any]:
    verify_signature(SECRET, delivery.headers["Rerankq-Signature"], delivery.body, tolerance_s=60)
    assert delivery.headers["Rerankq-Event-Id"] == delivery.event["id"]
    assert delivery.headers["Rerankq-Event-Type"] == delivery.event["type"]
    return delivery.event


def test_a_callback_arrives_signed_with_the_result_or_its_pointer(cb_worker: WorkerProcess, receiver: Receiver,
                                                                  media: dict[str, str]) -> None:
    jobs = [{"query": "red", "documents": ["a red disc", "a blue square"], "callback_url": receiver.url},
            {"query": "red", "documents": ["big"], "result_uri": "s3://results/cb/", "callback_url": receiver.url},
            {"query": "red", "documents": [{"image": "s3://media/q/missing.png"}], "callback_url": receiver.url}]
    with client_for(cb_worker.settings) as client:
        ids = client.submit_many(jobs)
        inline = client.result(ids[0], timeout=30)
        events = {e["data"]["job_id"]: e for e in map(verified, receiver.wait(3))}
    assert {job_id: e["type"] for job_id, e in events.items()} == dict(zip(ids, ["job.succeeded", "job.succeeded",
                                                                                 "job.failed"], strict=True))
    assert events[ids[0]]["data"]["result"] == inline and events[ids[0]]["data"]["state"] == "succeeded"
    assert events[ids[1]]["data"]["result_uri"] == f"s3://results/cb/{ids[1]}.json"
    assert "result" not in events[ids[1]]["data"]
    assert events[ids[2]]["data"]["error"].startswith("every document failed: s3://media/q/missing.png")
    first = receiver.deliveries[0]
    with pytest.raises(SignatureError, match="no v1 signature matches"):
        verify_signature(SECRET, first.headers["Rerankq-Signature"], first.body.replace(b"job.", b"jab."))
    with pytest.raises(SignatureError, match="outside the tolerance"):
        verify_signature(SECRET, first.headers["Rerankq-Signature"], first.body, tolerance_s=300,
                         now=time.time() + 301)
    wait_for(lambda: cb_worker.metric("rerankq_callbacks_delivered_total") >= 3, 10, "the delivered metric")
    assert cb_worker.metric("rerankq_callback_outbox_depth") == 0


def test_a_failing_receiver_gets_the_event_again_with_backoff(cb_worker: WorkerProcess, receiver: Receiver) -> None:
    receiver.statuses = [500, 503, 500]
    failed_before = cb_worker.metric("rerankq_callback_attempts_failed_total")
    with client_for(cb_worker.settings) as client:
        job_id = client.submit({"query": "q", "documents": ["d"], "callback_url": receiver.url})
        deliveries = receiver.wait(4)
    time.sleep(0.5)  # a fifth would come after a 1.6 s backoff: the 200 ends it
    assert len(receiver.deliveries) == 4
    assert {verified(d)["id"] for d in deliveries} == {deliveries[0].event["id"]}  # one event, four attempts
    assert deliveries[0].event["data"]["job_id"] == job_id
    assert [d.headers["Rerankq-Delivery-Attempt"] for d in deliveries] == ["1", "2", "3", "4"]
    gaps = [b.at - a.at for a, b in itertools.pairwise(deliveries)]
    for n, gap in enumerate(gaps):  # 0.2 s doubling, with up to 25 % jitter
        assert 0.2 * 2 ** n * 0.95 <= gap <= 0.2 * 2 ** n * 1.25 + 0.5, gaps
    assert cb_worker.metric("rerankq_callback_attempts_failed_total") - failed_before == 3


def test_cancel_and_expiry_produce_callbacks(cb_worker: WorkerProcess, receiver: Receiver) -> None:
    # Jobs for a model no worker serves stay queued; the worker's deliverer still delivers their events.
    idle = {"query": "q", "documents": ["d"], "model": "nobody-serves-this", "callback_url": receiver.url}
    with client_for(cb_worker.settings) as client:
        cancelled = client.submit(idle)
        expiring = client.submit({**idle, "deadline_s": 0.2})
        assert client.cancel(cancelled) == "queued"
        time.sleep(0.3)
        assert client.status(expiring)["state"] == "expired"  # expired on read: the read writes the event
        late = client.submit({**idle, "model": None, "expires_at": time.time() - 1})  # the worker expires it
        events = [verified(d) for d in receiver.wait(3)]
    assert sorted((e["data"]["job_id"], e["type"]) for e in events) == sorted(
        [(cancelled, "job.cancelled"), (expiring, "job.expired"), (late, "job.expired")])
    expired = next(e for e in events if e["type"] == "job.expired")["data"]
    assert expired["state"] == "expired" and expired["error"] == "deadline passed before it started"


def test_scoring_continues_while_the_receiver_hangs(cb_worker: WorkerProcess, receiver: Receiver) -> None:
    receiver.hold.set()
    with client_for(cb_worker.settings) as client:
        ids = client.submit_many([{"query": f"q{i}", "documents": ["a", "b"], "callback_url": receiver.url}
                                  for i in range(12)])
        results = dict(client.as_completed(ids, timeout=60))
    assert all(not isinstance(r, Exception) for r in results.values())
    assert len(receiver.deliveries) <= 4  # callbacks.concurrency threads wait on it; nothing else does
    receiver.hold.clear()
    receiver.release.set()
    events = [verified(d) for d in receiver.wait(12)]
    assert sorted(e["data"]["job_id"] for e in events) == sorted(ids)


def test_a_batch_callback_arrives_when_the_batch_ends(cb_worker: WorkerProcess, receiver: Receiver, s3: Any,
                                                       media: dict[str, str]) -> None:
    lines = [{"custom_id": f"c{i}", "query": "q", "documents": ["a", "b"]} for i in range(3)]
    s3.put_object(Bucket="results", Key="cb-batch/in.jsonl", Body="\n".join(map(json.dumps, lines)).encode())
    with client_for(cb_worker.settings) as client:
        with pytest.raises(InvalidRequest, match=r"^callback_url: .*must be an https:// URL"):
            client.submit_batch("s3://results/cb-batch/in.jsonl", "s3://results/cb-batch/out/",
                                callback_url="ftp://example.com/x")
        record = client.submit_batch("s3://results/cb-batch/in.jsonl", "s3://results/cb-batch/out/",
                                     callback_url=receiver.url)
        [delivery] = receiver.wait(1, timeout=60)
    event = verified(delivery)
    assert event["type"] == "batch.completed" and event["data"]["batch_id"] == record.batch_id
    assert event["data"]["counts"]["succeeded"] == 3
    assert event["data"]["manifest_uri"] == "s3://results/cb-batch/out/manifest.json"


def test_refused_targets_at_submit(cb_worker: WorkerProcess, receiver: Receiver) -> None:
    strict = CallbackSettings(secret=SECRET, allow_http=True, allowed_hosts=ANY)  # loopback not allowed
    port = receiver.server.server_port
    with client_for(cb_worker.settings, strict) as client:
        with pytest.raises(InvalidRequest, match=r"^callback_url: loopback address 127.0.0.1: refused"):
            client.submit({"query": "q", "documents": ["d"], "callback_url": receiver.url})
        with pytest.raises(InvalidRequest, match=r"^\[1\].callback_url: host 'localhost' resolves to a loopback"):
            client.submit_many([{"query": "q", "documents": ["d"]},
                                {"query": "q", "documents": ["d"], "callback_url": f"http://localhost:{port}/x"}])
    assert receiver.deliveries == []


def test_refused_targets_at_delivery_are_dropped_not_retried(redis_server: RedisServer, receiver: Receiver) -> None:
    """A host that passed at submit and resolves to a loopback address by delivery time (DNS changed)."""
    prefix = f"t{uuid.uuid4().hex[:8]}"
    submitted = Settings(redis_url=redis_server.url, queue_prefix=prefix, callbacks=OPEN)
    client = redis.Redis.from_url(redis_server.url)
    url = f"http://localhost:{receiver.server.server_port}/x"
    event_id = Outbox(submitted, client).enqueue(client, url, "job.succeeded", {"job_id": "j"})
    strict = Settings(redis_url=redis_server.url, queue_prefix=prefix,
                      callbacks=CallbackSettings(secret=SECRET, allow_http=True, poll_interval_s=0.05,
                                                 allowed_hosts=ANY))
    metrics = Metrics("-")
    deliverer = Deliverer(strict, client, metrics.callbacks).start()
    try:
        outbox = deliverer.outbox
        wait_for(lambda: outbox.dropped(), 10, "the refused event to be dropped")
        [dropped] = outbox.dropped()
        assert dropped["id"] == event_id and dropped["attempts"] == 1
        assert dropped["last_error"].startswith("refused: host 'localhost' resolves to a loopback address")
        assert outbox.depth() == 0 and receiver.deliveries == []
        assert metrics.registry.get_sample_value("rerankq_callbacks_dropped_total",
                                                 {"model": "-", "reason": "refused"}) == 1
    finally:
        deliverer.stop()
        client.close()


def test_an_event_is_dropped_with_its_last_error_when_attempts_run_out(redis_server: RedisServer,
                                                                       receiver: Receiver) -> None:
    receiver.statuses = [500] * 10
    prefix = f"t{uuid.uuid4().hex[:8]}"
    settings = Settings(redis_url=redis_server.url, queue_prefix=prefix, callbacks=CallbackSettings(
        secret=SECRET, allow_http=True, allow_private=True, max_attempts=2, backoff_s=0.05, poll_interval_s=0.05,
        allowed_hosts=ANY))
    client = redis.Redis.from_url(redis_server.url)
    metrics = Metrics("-")
    deliverer = Deliverer(settings, client, metrics.callbacks)
    outbox = deliverer.outbox
    event_id = outbox.enqueue(client, receiver.url, "batch.completed", {"batch_id": "b1"})
    client.hset(outbox.events, "evt_garbage", b"{not json")  # written by something else: dropped, not looped on
    client.zadd(outbox.due, {"evt_garbage": 0})
    deliverer.start()
    try:
        wait_for(lambda: len(outbox.dropped()) == 2, 10, "both events to be dropped")
        reasons = {d["id"]: d["last_error"] for d in outbox.dropped()}
        assert reasons[event_id] == "gave up after 2 attempts: HTTP 500"
        assert reasons["evt_garbage"].startswith("unreadable event")
        assert [verified(d)["data"] for d in receiver.deliveries] == [{"batch_id": "b1"}] * 2
        assert outbox.depth() == 0
        assert metrics.registry.get_sample_value("rerankq_callbacks_dropped_total",
                                                 {"model": "-", "reason": "attempts"}) == 1
    finally:
        deliverer.stop()
        client.close()


@pytest.mark.slow
def test_a_delivery_survives_a_crash_of_its_deliverer(redis_server: RedisServer, s3_server: S3Server,
                                                      receiver: Receiver, tmp_path: Path) -> None:
    """Worker A claims the event and dies mid-POST (SIGKILL); a standalone deliverer delivers it once A's claim
    times out. The receiver sees the same event id twice: at least once, deduplicated by id."""
    worker = start_worker("fake:hash", redis_server.url, s3_server.url, tmp_path,
                          **{**CALLBACK_ENV, "RERANKQ_CALLBACKS__VISIBILITY_S": "2"})
    receiver.hold.set()
    try:
        with client_for(worker.settings) as client:
            job_id = client.submit({"query": "q", "documents": ["d"], "callback_url": receiver.url})
            assert client.result(job_id, timeout=30)
        receiver.wait(1)  # held: the worker is mid-POST
        os.kill(worker.proc.pid, signal.SIGKILL)
        worker.proc.wait(10)
    finally:
        stop_worker(worker)
    receiver.hold.clear()
    log = (tmp_path / "deliverer.log").open("wb")
    deliverer = subprocess.Popen([sys.executable, "-m", "rerankq.worker.callbacks"], env=worker.env, stdout=log,
                                 stderr=subprocess.STDOUT)
    try:
        first, again = receiver.wait(2, timeout=30)
        assert verified(again)["id"] == verified(first)["id"] and again.event["data"]["job_id"] == job_id
        assert again.at - first.at >= 1.5  # not before A's claim timed out
        assert again.headers["Rerankq-Delivery-Attempt"] == "2"
        outbox = Outbox(worker.settings, redis.Redis.from_url(redis_server.url))
        wait_for(lambda: outbox.depth() == 0, 10, "the outbox to empty")
    finally:
        receiver.release.set()
        stop_process(deliverer)
        log.close()
    assert deliverer.returncode == 0, (tmp_path / "deliverer.log").read_text()
