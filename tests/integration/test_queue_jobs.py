"""The job record against a real Redis: lifecycle, idempotency, fencing, cancel, deadlines, poison, TTLs."""

from __future__ import annotations

import json
import time

import pytest
import redis

from rerankq.errors import NoSuchJob
from rerankq.jobs import JobState, Outcome, result_fields
from rerankq.jobstore import JobStore
from rerankq.settings import ResultSettings, Settings


@pytest.fixture()
def store(redis_url: str) -> JobStore:
    settings = Settings(redis_url=redis_url, results=ResultSettings(ttl_s=100, failure_ttl_s=1000), max_deliveries=2)
    return JobStore(settings, redis.Redis.from_url(redis_url))


def job(job_id: str, **extra: object) -> dict:
    return {"job_id": job_id, "query": {"text": "q"}, "documents": [{"text": "a"}, {"text": "b"}], **extra}


def ends(store: JobStore, job_id: str) -> int:
    """Terminal writes a job's record has seen (rerankq.jobs counts every one)."""
    return int(store.redis.hget(store.key(job_id), "ends") or 0)


def test_lifecycle_queued_running_succeeded(store: JobStore) -> None:
    assert store.create_many([job("a")]) == [True]
    status = store.status("a")
    assert (status["state"], status["progress"], status["started_at"]) == ("queued", {"pairs_done": 0,
                                                                                       "pairs_total": 2}, None)
    [started] = store.start_many([("a", 2, False)], "w1")
    assert started.state == JobState.RUNNING and started.fence == 1 and not started.died_before
    assert store.status("a")["worker"] == "w1"
    store.add_progress({("a", 1): 2})
    assert store.states(["a"], watch=True) == [JobState.RUNNING]  # a waiter: its end pushes a done token
    assert store.finish_many([Outcome("a", 1, JobState.SUCCEEDED, result_fields({"x": 1}, None))]) == ["succeeded"]
    record = store.record("a")
    assert record.state == JobState.SUCCEEDED and record.pairs_done == 2 and json.loads(record.result or "") == {"x": 1}
    assert 0 < store.redis.ttl(store.key("a")) <= 100
    assert store.redis.lrange(store.done("a"), 0, -1) == [b"1"]
    assert ends(store, "a") == 1 and "watched" not in store.redis.hgetall(store.key("a"))


def test_only_a_watched_job_gets_a_done_list(store: JobStore) -> None:
    store.create_many([job("unwatched")])
    [started] = store.start_many([("unwatched", 2, False)], "w1")
    assert store.states(["unwatched"]) == [JobState.RUNNING]  # a plain read marks nothing
    outcome = Outcome("unwatched", started.fence, JobState.SUCCEEDED, result_fields({"x": 1}, None))
    assert store.finish_many([outcome]) == ["succeeded"]
    assert not store.redis.exists(store.done("unwatched"))  # nobody blocked on it: no key, no token
    assert store.states(["unwatched"], watch=True) == [JobState.SUCCEEDED]  # ended: nothing to mark
    assert "watched" not in store.redis.hgetall(store.key("unwatched"))


def test_failures_are_kept_longer(store: JobStore) -> None:
    store.create_many([job("f")])
    [started] = store.start_many([("f", 2, False)], "w")
    store.finish_many([Outcome("f", started.fence, JobState.FAILED, {"error": "query: s3://b/k: no such key"})])
    assert store.status("f")["error"] == "query: s3://b/k: no such key"
    assert 100 < store.redis.ttl(store.key("f")) <= 1000


def test_same_id_is_created_once(store: JobStore) -> None:
    assert store.create_many([job("x"), job("x")]) == [True, False]


def test_a_finished_job_is_never_reopened_or_rewritten(store: JobStore) -> None:
    """A redelivered message meets a finished job: it is skipped, its result stays, no second terminal write."""
    store.create_many([job("r")])
    [first] = store.start_many([("r", 2, False)], "w1")
    store.finish_many([Outcome("r", first.fence, JobState.SUCCEEDED, result_fields({"v": 1}, None))])
    [again] = store.start_many([("r", 2, True)], "w2")
    assert again.state == JobState.SUCCEEDED and again.fence == 0
    # the same attempt cannot write twice either: the state already there comes back, nothing is written
    assert store.finish_many([Outcome("r", first.fence, JobState.FAILED, {"error": "again"})]) == ["succeeded"]
    record = store.record("r")
    assert json.loads(record.result or "") == {"v": 1} and record.worker == "w1" and ends(store, "r") == 1


def test_a_late_attempt_is_fenced_off(store: JobStore) -> None:
    """A worker presumed dead (SIGSTOP past its lease) wakes up: its progress and result are refused."""
    store.create_many([job("z")])
    [old] = store.start_many([("z", 2, False)], "frozen")
    [new] = store.start_many([("z", 2, True)], "alive")  # redelivered while the first still "runs"
    assert new.state == JobState.RUNNING and new.died_before and new.fence == old.fence + 1
    store.add_progress({("z", old.fence): 2})
    assert store.status("z")["progress"]["pairs_done"] == 0
    assert store.commit_many([("z", old.fence)]) == ["stale"]
    assert store.finish_many([Outcome("z", old.fence, JobState.SUCCEEDED, {"result": "{}"})]) == ["stale"]
    assert store.finish_many([Outcome("z", new.fence, JobState.SUCCEEDED, {"result": "{}"})]) == ["succeeded"]
    assert store.record("z").worker == "alive" and ends(store, "z") == 1


def test_cancel_wins_over_workers_until_the_result_is_being_written(store: JobStore) -> None:
    store.create_many([job("c"), job("d")])
    [c, d] = store.start_many([("c", 2, False), ("d", 2, False)], "w")
    assert store.cancel("c") == "running"
    assert store.commit_many([("c", c.fence)]) == ["cancelled"]  # so nothing goes to S3 after the cancel
    assert store.finish_many([Outcome("c", c.fence, JobState.SUCCEEDED, {"result": "{}"})]) == ["cancelled"]
    assert store.commit_many([("d", d.fence)]) == ["finishing"]
    assert store.cancel("d") == "finishing"  # past cancelling: left as it is
    assert store.status("d")["state"] == "running"
    assert store.finish_many([Outcome("d", d.fence, JobState.SUCCEEDED, {"result_uri": "s3://b/d.json"})]) \
        == ["succeeded"]
    assert store.cancel("d") == "succeeded" and store.status("d")["state"] == "succeeded"


def test_deadlines_expire_queued_jobs_on_read_and_on_start(store: JobStore) -> None:
    now = time.time()
    store.create_many([job("late", expires_at=now - 1), job("soon", deadline_s=0.3), job("fine", deadline_s=60)])
    assert store.status("late")["state"] == "expired"  # no worker needed: reading it settles it
    assert not store.redis.exists(store.done("late"))  # nobody watched it
    time.sleep(0.4)
    [soon, fine] = store.start_many([("soon", 2, False), ("fine", 2, False)], "w")
    assert soon.state == JobState.EXPIRED and soon.ended_now
    assert fine.state == JobState.RUNNING
    assert store.record("soon").error == "deadline passed before it started"


def test_a_job_that_kills_its_worker_alone_ends_failed_after_max_deliveries(store: JobStore) -> None:
    store.create_many([job("p")])
    store.start_many([("p", 2, False)], "w1")  # shared a round; the worker died
    seen = [store.start_many([("p", 2, True)], f"w{i}")[0] for i in (2, 3, 4)]  # alone, dying each time
    assert [s.state for s in seen] == [JobState.RUNNING, JobState.RUNNING, JobState.FAILED]
    assert store.record("p").error == "delivered 3 times; each time the worker died: last on w3"
    assert ends(store, "p") == 1


def test_requeue_after_a_transient_failure(store: JobStore) -> None:
    store.create_many([job("t")])
    [t] = store.start_many([("t", 2, False)], "w")
    assert store.requeue("t", t.fence, "S3 down") == 1
    assert store.status("t")["state"] == "queued"
    [again] = store.start_many([("t", 2, False)], "w")
    assert again.state == JobState.RUNNING and not again.died_before  # put back on purpose: not a death
    assert store.requeue("t", t.fence, "late") == 0  # a stale attempt cannot requeue it


def test_unknown_ids(store: JobStore) -> None:
    for call in (store.status, store.record, store.cancel):
        with pytest.raises(NoSuchJob, match="no such job: ghost"):
            call("ghost")
    assert store.start_many([("ghost", 1, False)], "w")[0].state is None
    assert store.finish_many([Outcome("ghost", 1, JobState.SUCCEEDED, {})]) == [None]
    assert store.states(["ghost"]) == [None]
