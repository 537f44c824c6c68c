"""Chaos tests: real processes (a private ``redis-server``, moto's S3 server, several ``rerankq worker``
processes with the fake scorer, a 3 s lease), real faults (SIGKILL, SIGSTOP, SIGTERM, a Redis restart, a
Sentinel failover, S3 going away, a job that kills its worker), and per job: ended exactly once (the
record's ``ends`` counter, read from Redis), with the right scores or a clear error; none lost, none stuck.

Figures (seconds, counts) are printed as ``[chaos] …`` lines (``pytest -s``), never asserted.
"""

from __future__ import annotations

import contextlib
import json
import re
import signal
import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from rerankq.jobs import JobState
from shell.cluster import S3Server
from tests.chaos_kit import (
    SLOW,
    SentinelGroup,
    Audit,
    Cluster,
    Redis,
    Reference,
    aof_redis,
    check_scores,
    hostname_of,
    queues_drained,
    records,
    settle,
    text_job,
    wait_until,
)

pytestmark = pytest.mark.slow


@pytest.fixture()
def private_redis() -> Iterator[Redis]:
    server = Redis().start()
    yield server
    server.stop()


@pytest.fixture()
def chaos(private_redis: Redis, s3_server: S3Server, tmp_path: Path) -> Iterator[Cluster]:
    # Rounds gather jobs for 300 ms: a worker holds rounds of many jobs and several forward passes.
    c = Cluster(private_redis.url, s3_server.url, tmp_path, RERANKQ_BATCH__FLUSH_INTERVAL_MS="300")
    yield c
    c.close()


@pytest.fixture(scope="module")
def ref(s3_server: S3Server) -> Reference:
    return Reference(s3_server.url)


def held_by(r: Any, prefix: str, ids: list[str], worker: str) -> list[str]:
    """Jobs a worker holds now (record running, that worker named)."""
    return [j for j, rec in records(r, prefix, ids).items()
            if rec.get("state") in ("running", "finishing") and rec.get("worker") == worker]


def scoring_on(r: Any, prefix: str, ids: list[str], worker: str) -> list[str]:
    """Jobs a worker holds whose scoring has begun (some pairs done)."""
    return [j for j, rec in records(r, prefix, ids).items()
            if rec.get("state") == "running" and rec.get("worker") == worker and int(rec.get("pairs_done", 0)) > 0]


# --- workers dying, freezing, stopping -------------------------------------------------------------------------
def test_sigkill_mid_round_the_other_worker_finishes_the_stranded_jobs(chaos: Cluster, ref: Reference) -> None:
    a, b = chaos.start(2, SLOW)
    client, r = chaos.client(), chaos.redis()
    jobs = {f"kill-{i}": text_job(i, 3, "kill", job_id=f"kill-{i}") for i in range(160)}
    ids = client.submit_many(list(jobs.values()))
    wait_until(lambda: scoring_on(r, chaos.prefix, ids, hostname_of(a)), 60, "worker A to be scoring a round")
    stranded = held_by(r, chaos.prefix, ids, hostname_of(a))
    a.proc.send_signal(signal.SIGKILL)
    killed_at = time.time()
    assert a.proc.wait(10) == -signal.SIGKILL
    audit = Audit(settle(r, chaos.prefix, ids, 120))
    print(audit.line("SIGKILL mid-round"))
    audit.check_exactly_once()
    check_scores(client, ref, {j: jobs[j] for j in ids})
    assert stranded, "the kill stranded nothing: the scenario did not happen"
    last = max(float(audit.records[j]["finished_at"]) for j in stranded)
    print(f"[chaos] SIGKILL (lease 3 s): {len(stranded)} stranded jobs, all finished {last - killed_at:.1f} s "
          "after the kill")
    assert {audit.records[j]["worker"] for j in stranded} == {hostname_of(b)}
    assert b.proc.poll() is None


def test_sigstop_past_the_lease_then_sigcont_is_fenced(chaos: Cluster, ref: Reference) -> None:
    a, b = chaos.start(2, SLOW)
    client, r = chaos.client(), chaos.redis()
    jobs = {f"stop-{i}": text_job(i, 3, "stop", job_id=f"stop-{i}") for i in range(160)}
    ids = client.submit_many(list(jobs.values()))
    wait_until(lambda: scoring_on(r, chaos.prefix, ids, hostname_of(a)), 60, "worker A to be scoring a round")
    a.proc.send_signal(signal.SIGSTOP)
    stranded = held_by(r, chaos.prefix, ids, hostname_of(a))
    stopped_at = time.time()
    try:
        # Frozen well past its lease: B finishes A's jobs meanwhile.
        before = settle(r, chaos.prefix, stranded, 120)
    finally:
        a.proc.send_signal(signal.SIGCONT)
    print(f"[chaos] SIGSTOP: {len(stranded)} jobs held by the frozen worker, taken over and finished "
          f"{max(float(rec['finished_at']) for rec in before.values()) - stopped_at:.1f} s after the stop")
    assert stranded and all(rec.get("state") == "succeeded" for rec in before.values()), before
    # A wakes with its rounds in hand and tries to finish them: every such outcome must be refused.
    wait_until(lambda: len(re.findall(r"outcome succeeded not written", a.log.read_text(errors="replace")))
               >= len(stranded), 60, "the woken worker to try its late outcomes")
    audit = Audit(settle(r, chaos.prefix, ids, 120))
    print(audit.line("SIGSTOP past the lease, then SIGCONT"))
    audit.check_exactly_once()
    check_scores(client, ref, {j: jobs[j] for j in ids})
    after = records(r, chaos.prefix, stranded)
    for job_id in stranded:  # the late attempt changed nothing: same result, same finisher, same time
        for name in ("result", "worker", "finished_at", "pairs_done", "fence", "ends"):
            assert after[job_id].get(name) == before[job_id].get(name), (job_id, name)
        assert after[job_id]["worker"] == hostname_of(b)
    # Metrics count each job once, on the worker that ended it.
    finishers = [rec["worker"] for rec in audit.records.values()]
    for w in (a, b):
        assert w.metric("rerankq_jobs_total", 'state="succeeded"') == finishers.count(hostname_of(w))
    print(f"[chaos] SIGSTOP: the woken worker had {len(stranded)} late outcomes refused; it ended "
          f"{finishers.count(hostname_of(a))} jobs before the stop, the other {finishers.count(hostname_of(b))}")
    a.proc.send_signal(signal.SIGTERM)
    assert a.proc.wait(60) == 0, a.tail()


def test_sigterm_mid_round_drains_what_it_holds(chaos: Cluster, ref: Reference) -> None:
    (a,) = chaos.start(1, SLOW)
    client, r = chaos.client(), chaos.redis()
    jobs = {f"term-{i}": text_job(i, 3, "term", job_id=f"term-{i}") for i in range(150)}
    ids = client.submit_many(list(jobs.values()))
    wait_until(lambda: scoring_on(r, chaos.prefix, ids, hostname_of(a)), 60, "the worker to be scoring")
    held = held_by(r, chaos.prefix, ids, hostname_of(a))
    a.proc.send_signal(signal.SIGTERM)
    t0 = time.monotonic()
    assert a.proc.wait(60) == 0, a.tail()
    print(f"[chaos] SIGTERM: exited {time.monotonic() - t0:.1f} s after the signal, holding {len(held)} jobs")
    drained = records(r, chaos.prefix, held)
    assert held and all(rec["state"] == "succeeded" and rec["worker"] == hostname_of(a) for rec in drained.values())
    left = records(r, chaos.prefix, ids)
    assert not [j for j, rec in left.items() if rec["state"] == "running"]  # nothing held by a worker gone
    chaos.start(1, SLOW)
    audit = Audit(settle(r, chaos.prefix, ids, 120))
    print(audit.line("SIGTERM mid-round"))
    audit.check_exactly_once()
    check_scores(client, ref, {j: jobs[j] for j in ids})


def test_a_late_attempt_does_not_release_the_new_holders_lease(chaos: Cluster, ref: Reference) -> None:
    """SIGSTOP the holder past its lease; another worker takes the job; the first wakes and acknowledges its
    (refused) attempt. That acknowledgement must not drop the new holder's lease: when the new holder dies
    too, the job must still come back and finish."""
    slow = {"RERANKQ_BATCH__MAX_PAIRS": "30"}
    first, second = chaos.start(2, "fake:l4-8b@0.1", **slow)  # two passes of ~2.5 s for the job below
    client, r = chaos.client(), chaos.redis()
    job = text_job(0, 60, "late", job_id="late-ack")
    client.submit(job)
    rec = wait_until(lambda: (x := records(r, chaos.prefix, ["late-ack"])["late-ack"]) and
                     int(x.get("pairs_done", 0)) >= 30 and x, 60, "the first pass to end")
    x, y = (first, second) if rec["worker"] == hostname_of(first) else (second, first)
    x.proc.send_signal(signal.SIGSTOP)
    try:
        wait_until(lambda: records(r, chaos.prefix, ["late-ack"])["late-ack"].get("worker") == hostname_of(y),
                   30, "the other worker to take the job over")
    finally:
        x.proc.send_signal(signal.SIGCONT)
    tags = r.hkeys("unacked")
    wait_until(lambda: "not written" in x.log.read_text(errors="replace"), 30, "the late attempt to be refused")
    time.sleep(0.5)  # its acknowledgement follows the refusal
    held = records(r, chaos.prefix, ["late-ack"])["late-ack"]
    print(f"[chaos] late ack: job {held.get('state')} on the new holder; unacked before {len(tags)}, now "
          f"{r.hlen('unacked')}")
    y.proc.send_signal(signal.SIGKILL)
    y.proc.wait(10)
    audit = Audit(settle(r, chaos.prefix, ["late-ack"], 30))
    print(audit.line("late acknowledgement, then the new holder killed"))
    audit.check_exactly_once()
    check_scores(client, ref, {"late-ack": job})


# --- Redis restarts and failover ---------------------------------------------------------------------------------
class Submitter(threading.Thread):
    """Submits jobs one by one until stopped, as a producer would: a submit that raises is retried with the same
    ``job_id``; ``returned`` holds the ids whose submit returned."""

    def __init__(self, client: Any, tag: str, docs: int = 2) -> None:
        super().__init__(daemon=True)
        self.client, self.tag, self.docs = client, tag, docs
        self.jobs: dict[str, dict[str, Any]] = {}
        self.returned: list[str] = []
        self.failures: list[str] = []
        self.halt = threading.Event()

    def run(self) -> None:
        i = 0
        while not self.halt.is_set():
            job = text_job(i, self.docs, self.tag, job_id=f"{self.tag}-{i}")
            while not self.halt.is_set():
                try:
                    self.client.submit(job)
                except Exception as exc:  # not acknowledged: retried with the same job_id
                    self.failures.append(f"{type(exc).__name__}: {exc}")
                    time.sleep(0.2)
                    continue
                self.jobs[job["job_id"]] = job
                self.returned.append(job["job_id"])
                break
            i += 1
            time.sleep(0.03)


def test_redis_sigkill_and_restart_on_its_aof_loses_no_acknowledged_job(s3_server: S3Server, tmp_path: Path,
                                                                         ref: Reference) -> None:
    server = aof_redis().start()
    c = Cluster(server.url, s3_server.url, tmp_path)
    try:
        workers = c.start(2, SLOW)
        client, r = c.client(), c.redis()
        submitter = Submitter(client, "aof")
        submitter.start()
        wait_until(lambda: len(submitter.returned) > 40, 30, "jobs to flow")
        server.kill()
        killed_at = len(submitter.returned)
        time.sleep(2.0)
        server.start()  # same port, same directory: it replays the append-only file
        wait_until(lambda: len(submitter.returned) > killed_at + 40, 60, "submits to succeed again")
        submitter.halt.set()
        submitter.join(30)
        audit = Audit(settle(r, c.prefix, submitter.returned, 90))
        print(audit.line("Redis SIGKILL + restart on its AOF"))
        print(f"[chaos] Redis restart: {len(submitter.failures)} submits raised during the outage and were retried")
        audit.check_exactly_once()
        check_scores(client, ref, {j: submitter.jobs[j] for j in submitter.returned})
        assert all(w.proc.poll() is None for w in workers), [w.tail() for w in workers]  # reconnected, alive
        for w in workers:
            w.proc.send_signal(signal.SIGTERM)
        assert [w.proc.wait(60) for w in workers] == [0, 0]
    finally:
        c.close()
        server.stop()


def test_sentinel_failover_mid_run_and_a_submit_a_paused_replica_did_not_take(s3_server: S3Server, tmp_path: Path,
                                                                               ref: Reference) -> None:
    group = SentinelGroup().start()
    c = Cluster(group.url, s3_server.url, tmp_path, RERANKQ_REDIS_MASTER_NAME=group.master_name,
                RERANKQ_BATCH__FLUSH_INTERVAL_MS="300")
    try:
        workers = c.start(2, SLOW)
        client, r = c.client(), c.redis()
        # With redis_min_replicas=1 a submit returns only once a replica has the job: with the replica paused
        # it raises, and a retry with the same job_id after the replica is back must run the job.
        strict = c.client(redis_min_replicas=1, redis_wait_ms=500)
        paused = text_job(0, 2, "paused", job_id="paused-0")
        group.replica.proc.send_signal(signal.SIGSTOP)  # type: ignore[union-attr]
        try:
            with pytest.raises(Exception, match="replicas"):
                strict.submit(paused)
        finally:
            group.replica.proc.send_signal(signal.SIGCONT)  # type: ignore[union-attr]
        wait_until(lambda: group.replica.client().info("replication").get("master_link_status") == "up", 30,
                   "the replica to catch up")
        strict.submit(paused)
        jobs = {f"fo-{i}": text_job(i, 3, "fo", job_id=f"fo-{i}") for i in range(150)}
        ids = client.submit_many(list(jobs.values()))
        wait_until(lambda: sum(rec.get("state") == "succeeded" for rec in records(r, c.prefix, ids).values()) > 20,
                   60, "the run to be under way")
        old = group.primary.port
        group.primary.kill()
        killed = time.monotonic()
        wait_until(lambda: group.master_port() != old, 60, "a replica to be promoted", step=0.2)
        print(f"[chaos] Sentinel: replica promoted {time.monotonic() - killed:.1f} s after the primary's SIGKILL")
        audit = Audit(settle(r, c.prefix, [*ids, "paused-0"], 120))
        print(audit.line("Sentinel failover mid-run"))
        audit.check_exactly_once()
        check_scores(client, ref, {**{j: jobs[j] for j in ids}, "paused-0": paused})
        assert all(w.proc.poll() is None for w in workers), [w.tail() for w in workers]
    finally:
        c.close()
        group.stop()
