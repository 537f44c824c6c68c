"""A raw Celery message whose job is invalid ends its job: a queued record named by its ``job_id`` ends
``failed`` with the reason (the field and the limit), the Celery result is FAILURE, the completion callback's
event is written, and the worker goes on. Real redis-server, a real worker process on ``fake:hash``."""

from __future__ import annotations

import base64
import json
import uuid
from collections.abc import Iterator
from typing import Any

import pytest
import redis
from celery import Celery

from rerankq import celeryconf, keys
from rerankq.cli.cluster import RedisServer, S3Server
from rerankq.client import RerankClient
from tests.integration.conftest import WorkerProcess, start_worker, stop_worker, wait_for


@pytest.fixture(scope="module")
def worker(redis_server: RedisServer, s3_server: S3Server, tmp_path_factory: pytest.TempPathFactory
           ) -> Iterator[WorkerProcess]:
    w = start_worker("fake:hash", redis_server.url, s3_server.url, tmp_path_factory.mktemp("bad-worker"),
                     RERANKQ_CALLBACKS__ALLOW_PRIVATE="true")
    yield w
    stop_worker(w)


def nested(depth: int) -> Any:
    value: Any = "x"
    for _ in range(depth):
        value = [value]
    return value


BAD = {
    "documents-type": ({"documents": "x"}, ["documents"]),
    "top_n-type": ({"top_n": "ten"}, ["top_n"]),
    "deep": ({"documents": [{"text": nested(500)}]}, ["documents"]),
    "huge": ({"documents": ["y" * 50_000_000]}, ["documents", "max_text_chars"]),
}


def celery_state(worker: WorkerProcess, task_id: str) -> str:
    """The task's state as any Celery client configured per ``result_backend_config`` reads it."""
    app = Celery("someone-else", broker=worker.settings.redis_url, set_as_current=False)
    app.conf.update(celeryconf.result_backend_config(worker.settings))
    wait_for(lambda: app.AsyncResult(task_id).state != "PENDING", 30, "the Celery result")
    return str(app.AsyncResult(task_id).state)


def raw_send(client: RerankClient, prefix: str, overrides: dict[str, Any]) -> tuple[str, str]:
    """A queued record made by the SDK's store, then a raw message naming it with an invalid job."""
    job = {"query": "q", "documents": ["a", "b"], "callback_url": "http://127.0.0.1:9/hook"}
    job_id = f"bad-{uuid.uuid4().hex[:12]}"
    assert client.jobs.create_many([{**job, "job_id": job_id}]) == [True]
    task = client.celery.send_task(keys.TASK_NAME, args=[{**job, **overrides, "job_id": job_id}],
                                   queue=f"{prefix}.normal")
    return job_id, str(task.id)


@pytest.mark.parametrize("case", list(BAD))
def test_an_invalid_raw_message_fails_its_queued_job(worker: WorkerProcess, case: str) -> None:
    overrides, words = BAD[case]
    with RerankClient(worker.settings) as client:
        job_id, task_id = raw_send(client, worker.settings.queue_prefix, overrides)
        wait_for(lambda: client.status(job_id)["state"] != "queued", 30, f"job {job_id} to end")
        status = client.status(job_id)
        assert status["state"] == "failed", status
        assert all(w in status["error"] for w in words), status["error"]
        assert celery_state(worker, task_id) == "FAILURE"
        events = redis.Redis.from_url(worker.settings.redis_url).hvals(keys.callback_keys(worker.settings)[1])
        assert any(json.loads(e)["job"].get("error") and job_id in json.loads(e)["key"] for e in events)
        good = client.submit({"query": "q", "documents": ["a", "b"]})
        assert len(client.result(good, timeout=60)["scores"]) == 2


def test_a_body_kombu_cannot_decode_fails_its_job_and_is_dead_lettered(worker: WorkerProcess) -> None:
    """100 000-deep nesting: JSON decoding fails (recursion) inside kombu, before the task runs; Celery alone
    would log it and drop it, leaving the record queued."""
    r = redis.Redis.from_url(worker.settings.redis_url)
    with RerankClient(worker.settings) as client:
        job_id, task_id = raw_send(client, "holding", {})  # parked on a queue no worker reads
        raw = json.loads(r.rpop("holding.normal") or b"")
        body = json.dumps([[{"query": "q", "documents": ["DEEP"], "job_id": job_id}], {}, {}])
        body = body.replace('"DEEP"', "[" * 100_000 + "]" * 100_000)
        raw["body"] = base64.b64encode(body.encode()).decode()
        queue = f"{worker.settings.queue_prefix}.normal"
        raw["properties"]["delivery_info"]["routing_key"] = queue
        dlq_before = r.llen(keys.dlq_key(worker.settings))
        r.lpush(queue, json.dumps(raw))
        wait_for(lambda: client.status(job_id)["state"] != "queued", 30, f"job {job_id} to end")
        status = client.status(job_id)
        assert status["state"] == "failed" and "cannot be decoded" in status["error"], status
        assert r.llen(keys.dlq_key(worker.settings)) == dlq_before + 1
        assert celery_state(worker, task_id) == "FAILURE"
        good = client.submit({"query": "q", "documents": ["a", "b"]})
        assert len(client.result(good, timeout=60)["scores"]) == 2
