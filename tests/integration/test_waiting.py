"""Waiting for many jobs costs Redis O(jobs): a client hears its jobs end on its notify list and reads each
record once; jobs it did not create are waited for by their states. Real redis-server, a real worker process
on the fake scorer (``fake:hash``). Also: scripts sent by hash survive a server that forgot them."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
import redis

from rerankq.cli.cluster import RedisServer, S3Server
from rerankq.client import RerankClient
from rerankq.errors import JobFailed
from rerankq.scripts import Scripts
from tests.integration.conftest import WorkerProcess, start_worker, stop_worker, wait_for


@pytest.fixture(scope="module")
def worker(redis_server: RedisServer, s3_server: S3Server, tmp_path_factory: pytest.TempPathFactory
           ) -> Iterator[WorkerProcess]:
    w = start_worker("fake:hash", redis_server.url, s3_server.url, tmp_path_factory.mktemp("waiting-worker"))
    yield w
    stop_worker(w)


def jobs(n: int, tag: str) -> list[dict[str, object]]:
    return [{"query": f"q {tag} {i}", "documents": [f"d {i}.{d}" for d in range(8)]} for i in range(n)]


def calls(r: redis.Redis) -> dict[str, int]:
    return {k.removeprefix("cmdstat_"): int(v["calls"]) for k, v in r.info("commandstats").items()}


def test_waiting_reads_no_record(worker: WorkerProcess) -> None:
    stats = redis.Redis.from_url(worker.settings.redis_url)
    with RerankClient(worker.settings) as client:
        ids = client.submit_many(jobs(200, "many"))
        wait_for(lambda: stats.llen(client.completions.key) == len(ids), 120, "every job heard of")
        wait_for(lambda: stats.zcard("unacked_index") == 0, 30, "the worker's acknowledgements")  # not counted
        stats.config_resetstat()
        results = dict(client.as_completed(ids, timeout=120))
        spent = calls(stats)
    assert sorted(results) == sorted(ids) and all(len(r["scores"]) == 8 for r in results.values())
    spent.pop("info", None)
    # the results came with the ends, on the notify list: no record read, no state polled
    assert "hgetall" not in spent and "evalsha" not in spent, spent
    assert sum(spent.values()) <= 4, spent  # the notify list: a few pops for all of them


def test_jobs_of_other_clients_and_unknown_ids_end_the_wait_too(worker: WorkerProcess) -> None:
    with RerankClient(worker.settings) as mine, RerankClient(worker.settings) as theirs:
        own = mine.submit_many(jobs(5, "own"))
        other = theirs.submit_many(jobs(5, "other"))
        bad = theirs.celery.send_task("rerankq.rerank", args=[{"query": "q", "documents": []}],
                                      queue=f"{worker.settings.queue_prefix}.normal").id
        wait_for(lambda: theirs.statuses([bad])[0] is not None, 60, "the worker's record of the raw message")
        out = dict(mine.as_completed([*own, *other, bad, "no-such-job"], timeout=120))
    assert all(isinstance(out[j], dict) for j in [*own, *other])
    assert isinstance(out[bad], JobFailed) and "no-such-job" in out


def test_result_of_an_own_job_waits_on_the_list(worker: WorkerProcess) -> None:
    with RerankClient(worker.settings) as client:
        first, second = client.submit_many(jobs(2, "one"))
        assert len(client.result(second, timeout=60)["scores"]) == 8
        assert len(client.result(first, timeout=60)["scores"]) == 8  # its end was heard while waiting for second


def test_scripts_lost_by_the_server_are_loaded_and_run_once(redis_url: str, tmp_path: Path) -> None:
    r = redis.Redis.from_url(redis_url)
    scripts = Scripts(r)
    incr = scripts.register("return redis.call('INCRBY', KEYS[1], ARGV[1])")
    pipe = r.pipeline(transaction=False)
    incr(keys=["n"], args=[2], client=pipe)
    pipe.rpush("log", "a")
    assert scripts.execute(pipe) == [2, 1]
    r.script_flush()
    pipe = r.pipeline(transaction=False)
    incr(keys=["n"], args=[3], client=pipe)
    pipe.rpush("log", "b")
    assert scripts.execute(pipe) == [5, 2]  # the script ran once after its reload, the push once
    r.script_flush()
    assert incr(keys=["n"], args=[1]) == 6
    assert r.lrange("log", 0, -1) == [b"a", b"b"]


def test_a_client_without_a_notify_list_waits_by_state(worker: WorkerProcess) -> None:
    stats = redis.Redis.from_url(worker.settings.redis_url)
    with RerankClient(worker.settings, notify=False) as client:
        ids = client.submit_many(jobs(3, "quiet"))
        results = dict(client.as_completed(ids, timeout=60))
        assert client.completions.key is None and len(client.result(ids[0], timeout=10)["scores"]) == 8
    assert sorted(results) == sorted(ids)
    assert not stats.keys(f"{worker.settings.queue_prefix}:notify:*")  # nothing was left to fill up
