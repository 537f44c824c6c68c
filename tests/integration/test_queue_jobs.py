"""The job record store against a real Redis: lifecycle, idempotency, cancel, TTLs, unknown ids."""

from __future__ import annotations

import json

import pytest
import redis

from rerankq.errors import JobFailed, NoSuchJob
from rerankq.jobs import JobStore, result_fields
from rerankq.settings import ResultSettings, Settings


@pytest.fixture()
def store(redis_url: str) -> JobStore:
    settings = Settings(redis_url=redis_url, results=ResultSettings(ttl_s=100, failure_ttl_s=1000))
    return JobStore(settings, redis.Redis.from_url(redis_url))


def job(job_id: str) -> dict:
    return {"job_id": job_id, "query": {"text": "q"}, "documents": [{"text": "a"}, {"text": "b"}]}


def test_lifecycle_queued_running_succeeded(store: JobStore) -> None:
    assert store.create_many([job("a")]) == [True]
    status = store.status("a")
    assert (status["state"], status["progress"], status["started_at"]) == ("queued", {"pairs_done": 0,
                                                                                       "pairs_total": 2}, None)
    [(state, created)] = store.start_many(["a"], "w1", [2])
    assert (state, created) == ("running", status["created_at"])
    store.add_progress({"a": 2})
    assert store.finish_many([("a", "succeeded", result_fields({"x": 1}, None))]) == ["succeeded"]
    status = store.status("a")
    assert status["state"] == "succeeded" and status["worker"] == "w1"
    assert status["progress"] == {"pairs_done": 2, "pairs_total": 2}
    assert json.loads(store.record("a")["result"]) == {"x": 1}
    assert 90 < store.redis.ttl(store.key("a")) <= 100
    assert store.redis.lrange(store.done("a"), 0, -1) == [b"1"]


def test_failures_are_kept_longer(store: JobStore) -> None:
    store.create_many([job("f")])
    store.finish_many([("f", "failed", {"error": "query: s3://b/k: no such key"})])
    assert store.status("f")["error"] == "query: s3://b/k: no such key"
    assert store.redis.ttl(store.key("f")) > 100


def test_same_id_is_created_once(store: JobStore) -> None:
    assert store.create_many([job("x"), job("x"), job("y")]) == [True, False, True]
    assert store.create_many([job("x")]) == [False]


def test_redelivered_job_overwrites_its_result(store: JobStore) -> None:
    store.create_many([job("r")])
    store.finish_many([("r", "failed", {"error": "worker lost"})])
    store.start_many(["r"], "w2", [2])
    store.finish_many([("r", "succeeded", result_fields({"v": 2}, "s3://b/r.json"))])
    record = store.record("r")
    assert record["state"] == "succeeded" and "error" not in record and "result" not in record
    assert record["result_uri"] == "s3://b/r.json"
    assert store.redis.llen(store.done("r")) == 1


def test_cancel_wins_over_workers(store: JobStore) -> None:
    store.create_many([job("c")])
    assert store.cancel("c") == "queued"
    assert store.start_many(["c"], "w", [2])[0][0] == "cancelled"
    assert store.finish_many([("c", "succeeded", {"result": "{}"})]) == ["cancelled"]
    assert store.status("c")["state"] == "cancelled"
    assert store.cancel("c") == "cancelled"


def test_unknown_ids(store: JobStore) -> None:
    for call in (store.status, store.record, store.cancel):
        with pytest.raises(NoSuchJob, match="no such job: ghost"):
            call("ghost")
    assert store.start_many(["ghost"], "w", [1])[0][0] is None
    assert store.finish_many([("ghost", "succeeded", {})]) == [None]
    assert store.states(["ghost"]) == [None]


def test_priorities_are_separate_queues_and_records_exist_before_any_worker(redis_url: str) -> None:
    from producer import RerankClient

    with RerankClient(redis_url=redis_url, queue_prefix="nobody") as client:
        ids = {p: client.submit({"query": {"text": "q"}, "documents": [{"text": "d"}], "priority": p})
               for p in ("high", "normal", "low", "low")}
        assert [client.redis.llen(f"nobody.{p}") for p in ("high", "normal", "low")] == [1, 1, 2]
        assert client.status(ids["high"])["state"] == "queued"
        with pytest.raises(TimeoutError):
            client.result(ids["high"], timeout=0.2)
        assert client.cancel(ids["high"]) == "queued"
        with pytest.raises(JobFailed, match="cancelled"):
            client.result(ids["high"], timeout=5)
