"""Shards (``RERANKQ_REDIS_SHARDS``, ``rerankq.shards``) with real parts: three private ``redis-server``s with
their append-only files, one ``rerankq worker`` process per shard (``--shard`` through ``RERANKQ_SHARD``; the
fake scorer ``fake:hash``, or ``fake:l4-8b`` where jobs must be in flight), moto's S3 server, the HTTP gateway.

Each job's record is read from the Redis its id names, and only there; a fresh client finds every status and
result from the id alone; a shard's Redis SIGKILLed and restarted mid-run loses nothing on any shard (each
job ended exactly once: the record's ``ends``).
"""

from __future__ import annotations

import json
import os
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from rerankq.batches import BatchState
from rerankq.cli.cluster import S3Server, stop_process
from rerankq.client import RerankClient
from rerankq.shards import Shards, shard_of
from tests.chaos_kit import (
    SLOW,
    Audit,
    Cluster,
    Redis,
    Reference,
    aof_redis,
    check_scores,
    hostname_of,
    records,
    settle,
    text_job,
    wait_until,
)
from tests.integration.conftest import WorkerProcess, _wait_ready, start_gateway
from tests.integration.test_chaos import Submitter

pytestmark = pytest.mark.slow
SHARDS = 3


@pytest.fixture()
def servers() -> Iterator[list[Redis]]:
    started = [aof_redis().start() for _ in range(SHARDS)]
    yield started
    for server in started:
        server.stop()


@pytest.fixture()
def sharded(servers: list[Redis], s3_server: S3Server, tmp_path: Path) -> Iterator[Cluster]:
    """Workers' and clients' settings: every shard listed; each worker is given its own (``start_per_shard``)."""
    c = Cluster(servers[0].url, s3_server.url, tmp_path, RERANKQ_REDIS_SHARDS=",".join(s.url for s in servers),
                RERANKQ_BATCH__FLUSH_INTERVAL_MS="100")
    yield c
    c.close()


@pytest.fixture(scope="module")
def ref(s3_server: S3Server) -> Reference:
    return Reference(s3_server.url)


def start_per_shard(c: Cluster, model: str = "fake:hash") -> list[WorkerProcess]:
    workers = [c.spawn(model, RERANKQ_SHARD=str(i)) for i in range(SHARDS)]
    for worker in workers:
        _wait_ready(worker)
    return workers


def by_shard(ids: list[str]) -> list[list[str]]:
    return [[j for j in ids if shard_of(j, SHARDS) == i] for i in range(SHARDS)]


def audit_all(servers: list[Redis], prefix: str, ids: list[str], timeout: float) -> Audit:
    """Every job's record, each read from the shard its id names (and settled there)."""
    found: dict[str, dict[str, str]] = {}
    for server, mine in zip(servers, by_shard(ids), strict=True):
        found.update(settle(server.client(), prefix, mine, timeout))
    return Audit(found)


def test_jobs_spread_over_the_shards_and_a_fresh_client_finds_each_by_id(
        servers: list[Redis], sharded: Cluster, ref: Reference) -> None:
    workers = start_per_shard(sharded)
    client = sharded.client()
    jobs = {f"spread-{i}": text_job(i, 3, "spread", job_id=f"spread-{i}") for i in range(150)}
    ids = client.submit_many(list(jobs.values()))
    ended = dict(client.as_completed(ids, timeout=120))  # heard on the client's notify list of every shard
    assert sorted(ended) == sorted(ids) and not [o for o in ended.values() if isinstance(o, Exception)]

    groups = by_shard(ids)
    print(f"[shards] {len(ids)} jobs over {SHARDS} shards: {[len(g) for g in groups]}")
    assert all(len(g) > 20 for g in groups), [len(g) for g in groups]
    for i, (server, mine) in enumerate(zip(servers, groups, strict=True)):
        on_it = records(server.client(), sharded.prefix, ids)
        assert {j for j, rec in on_it.items() if rec} == set(mine)  # its jobs, all of them, and no other's
        assert {rec["worker"] for j, rec in on_it.items() if rec} == {hostname_of(workers[i])}  # its worker's
    audit_all(servers, sharded.prefix, ids, 10).check_exactly_once()

    fresh = sharded.client()  # knows nothing of these jobs but their ids
    assert [s and s["state"] for s in fresh.statuses(ids)] == ["succeeded"] * len(ids)
    for mine in groups:
        assert fresh.status(mine[0])["state"] == "succeeded"
        assert fresh.result(mine[0], timeout=5)["scores"] == ref.scores(jobs[mine[0]])
    check_scores(fresh, ref, jobs)


def test_a_job_on_another_shard_than_its_id_names_is_still_found(sharded: Cluster, ref: Reference) -> None:
    """A job made before a shard was added lives where its id pointed then: reads look on every shard."""
    start_per_shard(sharded)
    shards = Shards(sharded.settings)
    job_id = next(f"old-{i}" for i in range(100) if shards.index(f"old-{i}") == 0)
    with RerankClient(shards.single(1), notify=False) as old:  # as a client that knew shard 1 only would
        old.submit(text_job(1, 2, "old", job_id=job_id))
    fresh = sharded.client()
    assert fresh.result(job_id, timeout=60)["scores"] == ref.scores(text_job(1, 2, "old"))  # waited across shards
    assert fresh.status(job_id)["state"] == "succeeded"
    assert fresh.statuses([job_id, "never-made"]) == [fresh.status(job_id), None]
    assert next(iter(fresh.as_completed([job_id], timeout=10)))[1]["scores"] == ref.scores(text_job(1, 2, "old"))


def commands(servers: list[Redis]) -> list[int]:
    """Commands each server has run so far (``INFO commandstats``; a script's inner calls included)."""
    return [sum(int(stat["calls"]) for stat in server.client().info("commandstats").values()) for server in servers]


def test_waiting_across_shards_blocks_and_wakes(servers: list[Redis], sharded: Cluster, ref: Reference) -> None:
    """Two clients wait on the same jobs spread over every shard, before any worker runs: the one that made them
    on its notify list (a thread per shard), the other on their done lists (a thread per shard); neither
    spins. Then the workers start and both hear every end."""
    maker, other = sharded.client(), sharded.client()
    jobs = {f"wait-{i}": text_job(i, 2, "wait", job_id=f"wait-{i}") for i in range(30)}
    ids = maker.submit_many(list(jobs.values()))
    outcomes: dict[str, dict[str, Any]] = {}

    def wait(name: str, client: RerankClient) -> None:
        outcomes[name] = dict(client.as_completed(ids, timeout=120))

    threads = [threading.Thread(target=wait, args=(name, c)) for name, c in (("maker", maker), ("other", other))]
    for thread in threads:
        thread.start()
    time.sleep(1.0)
    before, started = commands(servers), time.monotonic()
    time.sleep(8.0)
    rates = [(b - a) / (time.monotonic() - started) for a, b in zip(before, commands(servers), strict=True)]
    print(f"[shards] two clients waiting on {len(ids)} jobs over {SHARDS} shards, no worker: Redis commands/s per "
          f"shard {[round(r, 1) for r in rates]}")
    # Idle, the shards see the two clients' blocking pops (one per shard per 2 s each) and, as on one Redis, the
    # other client reading the states of the jobs it did not make twice per 2 s quiet slice (a script call and
    # its HMGET each): about 2 commands per job per second in all, whatever the number of shards; no loop.
    assert sum(rates) < 2.5 * len(ids) + 5 * SHARDS, rates
    start_per_shard(sharded)
    for thread in threads:
        thread.join(120)
    assert sorted(outcomes["maker"]) == sorted(outcomes["other"]) == sorted(ids)
    for name in ("maker", "other"):
        assert all(o["scores"] == ref.scores(jobs[j]) for j, o in outcomes[name].items()), name


def test_a_batch_spreads_its_jobs_and_its_runner_follows_them_on_every_shard(
        servers: list[Redis], sharded: Cluster, s3: Any, ref: Reference) -> None:
    start_per_shard(sharded)
    s3.create_bucket(Bucket="shard-batches")
    n = 300
    lines = [{"custom_id": f"c{i}", "query": {"text": f"batch query {i}"},
              "documents": [{"text": f"batch doc {i}.{d}"} for d in range(2)]} for i in range(1, n + 1)]
    s3.put_object(Bucket="shard-batches", Key="in.jsonl", Body="\n".join(json.dumps(x) for x in lines).encode())
    client = sharded.client()
    client.submit_batch("s3://shard-batches/in.jsonl", "s3://shard-batches/out/", batch_id="sharded-batch")
    final = client.wait_batch("sharded-batch", timeout=180)
    assert final.state == BatchState.COMPLETED and final.counts["succeeded"] == n, final
    home = Shards(sharded.settings).index("sharded-batch")
    assert [bool(server.client().exists(f"{sharded.prefix}:batch:sharded-batch")) for server in servers] == [
        i == home for i in range(SHARDS)]  # the record on its id's shard only
    ids = [f"sharded-batch-{i}" for i in range(1, n + 1)]
    assert all(len(g) > 50 for g in by_shard(ids)), [len(g) for g in by_shard(ids)]
    audit_all(servers, sharded.prefix, ids, 10).check_exactly_once()
    results = []
    for obj in s3.list_objects_v2(Bucket="shard-batches", Prefix="out/results/")["Contents"]:
        body = s3.get_object(Bucket="shard-batches", Key=obj["Key"])["Body"].read().decode()
        results += [json.loads(line) for line in body.splitlines() if line]
    assert sorted(r["line"] for r in results) == list(range(1, n + 1))
    for r in results[:20]:
        job = lines[r["line"] - 1]
        assert r["scores"] == ref.scores({"query": job["query"], "documents": job["documents"]}), r


def test_the_gateway_sees_every_shard(sharded: Cluster, tmp_path: Path) -> None:
    workers = start_per_shard(sharded)
    gateway = start_gateway({**os.environ, **sharded.env}, tmp_path)
    try:
        with httpx.Client(base_url=gateway.url, timeout=60) as http:
            (model,) = http.get("/v1/models").json()["data"]
            assert model["id"] == "fake:hash" and model["workers"] == SHARDS
            view = http.get("/v1/queue").json()
            assert sorted(w["name"] for w in view["workers"]) == sorted(hostname_of(w) for w in workers)
            assert sorted(w["shard"] for w in view["workers"]) == list(range(SHARDS))
            ids = []
            for i in range(12):
                body = {"query": f"gateway query {i}", "documents": ["a b", "c d e"], "model": "fake:hash"}
                answer = http.post("/v1/rerank", json=body)
                assert answer.status_code == 200, answer.text
                job = http.post("/v1/jobs", json={"query": {"text": f"q {i}"}, "documents": [{"text": "x"}]})
                assert job.status_code == 202, job.text
                ids.append(job.json()["job_id"])
            assert {shard_of(j, SHARDS) for j in ids} == set(range(SHARDS))
            for job_id in ids:  # each read on its own shard, waited for there
                events = http.get(f"/v1/jobs/{job_id}/events").text
                assert "event: end" in events and '"succeeded"' in events, events
                assert len(http.get(f"/v1/jobs/{job_id}/result").json()["scores"]) == 1
            recent = http.get("/v1/queue").json()["recent"]
            assert {r["job_id"] for r in recent} >= set(ids)
            assert http.get("/readyz").status_code == 200
    finally:
        stop_process(gateway.proc)


def test_one_shard_killed_and_restarted_loses_nothing_on_any_shard(
        servers: list[Redis], sharded: Cluster, ref: Reference) -> None:
    workers = start_per_shard(sharded, SLOW)
    client = sharded.client()
    submitter = Submitter(client, "shardkill")
    submitter.start()
    wait_until(lambda: len(submitter.returned) > 60, 60, "jobs to flow")
    # A burst on shard 1 just before its Redis dies: queued and running there when it goes.
    burst = {j: text_job(i, 3, "burst", job_id=j) for i, j in enumerate(
        j for j in (f"burst-{i}" for i in range(300)) if shard_of(j, SHARDS) == 1) if i < 60}
    client.submit_many(list(burst.values()))
    time.sleep(0.3)
    unfinished = [j for j, rec in records(servers[1].client(), sharded.prefix, list(burst)).items()
                  if rec.get("state") in ("queued", "running", "finishing")]
    servers[1].kill()
    killed_at = len(submitter.returned)
    # Meanwhile the other shards serve on: jobs whose ids name them are submitted and scored.
    others = [j for j in (f"alive-{i}" for i in range(60)) if shard_of(j, SHARDS) != 1][:6]
    alive = sharded.client()
    started = time.monotonic()
    alive.submit_many([text_job(i, 2, "alive", job_id=j) for i, j in enumerate(others)])
    outcomes = dict(alive.as_completed(others, timeout=60))
    print(f"[shards] with shard 1 down: {len(others)} jobs on shards 0 and 2 scored in "
          f"{time.monotonic() - started:.1f} s")
    assert not [o for o in outcomes.values() if isinstance(o, Exception)], outcomes
    servers[1].start()  # same port, same directory: it replays its append-only file
    wait_until(lambda: len(submitter.returned) > killed_at + 60, 90, "submits to succeed again")
    submitter.halt.set()
    submitter.join(30)

    assert unfinished, "shard 1 had nothing in flight when it was killed: the scenario did not happen"
    returned = submitter.returned + list(burst)
    submitter.jobs.update(burst)
    assert all(by_shard(returned)), [len(g) for g in by_shard(returned)]
    audit = audit_all(servers, sharded.prefix, returned, 120)
    print(audit.line(f"shard 1 of {SHARDS} SIGKILLed and restarted on its AOF") +
          f", per shard {[len(g) for g in by_shard(returned)]}, {len(unfinished)} in flight on it at the kill, "
          f"{len(submitter.failures)} submits retried")
    audit.check_exactly_once()
    check_scores(client, ref, {j: submitter.jobs[j] for j in returned})
    assert all(w.proc.poll() is None for w in workers), [w.tail() for w in workers]

