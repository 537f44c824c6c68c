"""Tools for the chaos tests (tests/integration/test_chaos.py) and the chaos figures (tests/chaos_bench.py):
a cluster of real ``rerankq worker`` processes on a private Redis, an audit of every job's record read from
Redis itself, and the scores the fake model must give, computed in this process.

The audit counts duplicates from Redis: each terminal write increments the record's ``ends`` field
(``rerankq.jobs``), so ``ends == 1`` for every job means each ended exactly once.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import redis

from rerankq.cli.cluster import free_port, stop_process, wait_for_port
from rerankq.jobs import TERMINAL, JobState
from rerankq.settings import Settings
from tests.integration.conftest import WorkerProcess, _wait_ready

ROOT = Path(__file__).resolve().parents[1]
SLOW = "fake:l4-8b"  # a modelled L4 running the 8B model: ~16 ms per short text pair, GIL released


def hostname_of(worker: WorkerProcess) -> str:
    """The Celery node name a worker gives itself by default (``rerankq.worker.main.run_worker``)."""
    return f"rerankq-cpu-{worker.proc.pid}@{socket.gethostname()}"


# --- Redis processes --------------------------------------------------------------------------------------------
@dataclass
class Redis:
    """A private ``redis-server`` that can be killed and started again on the same port and files."""

    args: list[str] = field(default_factory=list)
    port: int = field(default_factory=free_port)
    workdir: str = field(default_factory=lambda: tempfile.mkdtemp(prefix="rerankq-chaos-redis-"))
    proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> Redis:
        log = Path(self.workdir) / f"redis-{self.port}.log"
        with log.open("ab") as out:
            self.proc = subprocess.Popen(
                ["redis-server", "--port", str(self.port), "--bind", "127.0.0.1", "--dir", self.workdir,
                 "--save", "", "--loglevel", "notice", *self.args],
                stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
        wait_for_port(self.port, 10, "redis-server", self.proc)
        return self

    def kill(self) -> None:
        assert self.proc is not None
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait(10)

    def client(self) -> redis.Redis:
        return redis.Redis(port=self.port, socket_timeout=5)

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            stop_process(self.proc, grace=5.0)


def aof_redis() -> Redis:
    """A Redis that persists every write to its append-only file, fsynced once a second."""
    return Redis(args=["--appendonly", "yes", "--appendfsync", "everysec"])


# --- the cluster --------------------------------------------------------------------------------------------------
class Cluster:
    """Workers on one queue prefix of one Redis, a short lease, and the knobs every test shares."""

    def __init__(self, redis_url: str, s3_url: str, log_dir: Path, lease_s: int = 3, **env: str) -> None:
        self.redis_url = redis_url
        self.s3_url = s3_url
        self.log_dir = log_dir
        self.prefix = f"c{uuid.uuid4().hex[:8]}"
        self.env = {"RERANKQ_REDIS_URL": redis_url, "RERANKQ_S3_ENDPOINT_URL": s3_url,
                    "RERANKQ_QUEUE_PREFIX": self.prefix, "RERANKQ_LEASE_S": str(lease_s),
                    "RERANKQ_ALLOW_FILE_URLS": "true", "OMP_NUM_THREADS": "1", **env}
        self.settings = Settings(_env_file=None, **_settings_from_env(self.env))  # type: ignore[call-arg]
        self.workers: list[WorkerProcess] = []
        self.clients: list[Any] = []

    def spawn(self, model: str = "fake:hash", cwd: Path = ROOT, argv: list[str] | None = None,
              **env: str) -> WorkerProcess:
        """Start a worker process (not waited for: ``ready`` does that)."""
        port = free_port()
        full = {**os.environ, **self.env, "RERANKQ_METRICS_PORT": str(port), **env}
        log = self.log_dir / f"worker-{self.prefix}-{len(self.workers)}.log"
        argv = argv or [sys.executable, "-m", "rerankq.cli", "worker", "--model", model, "--device", "cpu"]
        with log.open("wb") as out:
            proc = subprocess.Popen(argv, env=full, stdout=out, stderr=subprocess.STDOUT, cwd=cwd)
        worker = WorkerProcess(proc, full, self.settings, port, log)
        self.workers.append(worker)
        return worker

    def start(self, n: int = 1, model: str = "fake:hash", **env: str) -> list[WorkerProcess]:
        """Start ``n`` workers at once and wait until each consumes."""
        workers = [self.spawn(model, **env) for _ in range(n)]
        for worker in workers:
            _wait_ready(worker)
        return workers

    def client(self, **overrides: Any) -> Any:
        from rerankq.client import RerankClient

        client = RerankClient(self.settings.model_copy(update=overrides))
        self.clients.append(client)
        return client

    def redis(self) -> redis.Redis:
        from rerankq.connections import redis_client

        return redis_client(self.settings)

    def close(self) -> None:
        """Stop every worker at once: SIGTERM (drain), SIGKILL after 15 s."""
        alive = [w.proc for w in self.workers if w.proc.poll() is None]
        for proc in alive:
            with contextlib.suppress(ProcessLookupError):
                proc.send_signal(signal.SIGCONT)
                proc.send_signal(signal.SIGTERM)
        deadline = time.monotonic() + 15
        for proc in alive:
            try:
                proc.wait(max(deadline - time.monotonic(), 0.1))
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(5)
        for client in self.clients:
            with contextlib.suppress(Exception):
                client.close()


def _settings_from_env(env: dict[str, str]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in env.items():
        if not key.startswith("RERANKQ_"):
            continue
        name = key.removeprefix("RERANKQ_").lower()
        if "__" in name:
            section, _, knob = name.partition("__")
            out.setdefault(section, {})[knob] = value
        else:
            out[name] = value
    return out


@contextlib.contextmanager
def cluster(redis_url: str, s3_url: str, log_dir: Path, **kwargs: Any) -> Iterator[Cluster]:
    c = Cluster(redis_url, s3_url, log_dir, **kwargs)
    try:
        yield c
    finally:
        c.close()


# --- jobs and their expected scores ------------------------------------------------------------------------------
def text_job(i: int, docs: int = 3, tag: str = "", **extra: Any) -> dict[str, Any]:
    return {"query": {"text": f"query {tag} {i}"},
            "documents": [{"text": f"document {tag} {i}.{d} " + "lorem " * (d % 3)} for d in range(docs)],
            **extra}


class Reference:
    """The scores the fake model gives a job, computed in this process on the same sides (its scores are a
    hash of the content, so any worker must give exactly these)."""

    def __init__(self, s3_url: str | None = None) -> None:
        from rerankq.models.fake import load_fake
        from rerankq.models.options import LoadOptions

        self.model = load_fake("fake:hash", LoadOptions())
        self.settings = Settings(_env_file=None, s3_endpoint_url=s3_url, allow_file_urls=True)  # type: ignore[call-arg]
        self._resolver: Any = None

    def scores(self, job: dict[str, Any]) -> list[float]:
        from rerankq.media.resolver import MediaResolver
        from rerankq.media.sides import Side
        from rerankq.models.contract import instruction_for
        from rerankq.schema import parse_job
        from rerankq.worker.held import budget_of

        parsed = parse_job(dict(job, job_id=job.get("job_id") or "ref"), self.settings)
        if self._resolver is None:
            self._resolver = MediaResolver(self.settings, self.model.preprocessor)
        sides = [Side.from_dict(s.model_dump(exclude_none=True)) for s in (parsed.query, *parsed.documents)]
        budget = budget_of(parsed, self.settings.limits)
        resolved = self._resolver.resolve_sides(sides, budget)
        query, docs = resolved[0], resolved[1:]
        instruction = parsed.instruction or instruction_for(self.model, self.settings.instruction)
        return self.model.forward([self.model.prepare(instruction, query, d) for d in docs])


# --- the audit ------------------------------------------------------------------------------------------------------
def records(r: redis.Redis, prefix: str, job_ids: list[str]) -> dict[str, dict[str, str]]:
    """Every job's hash, as text (an empty dict for a job with no record)."""
    pipe = r.pipeline(transaction=False)
    for job_id in job_ids:
        pipe.hgetall(f"{prefix}:job:{job_id}")
    out = {}
    for job_id, raw in zip(job_ids, pipe.execute(), strict=True):
        out[job_id] = {k.decode(): v.decode() for k, v in raw.items()}
    return out


def wait_until(predicate: Callable[[], Any], timeout: float, what: str, step: float = 0.05) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        try:
            value = predicate()
        except redis.ConnectionError:
            value = None
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout:.0f} s waiting for {what}")
        time.sleep(step)


def settle(r: redis.Redis, prefix: str, job_ids: list[str], timeout: float) -> dict[str, dict[str, str]]:
    """Wait until every job's record is terminal (or ``timeout``); returns the records either way, so that the
    audit names the jobs that are lost (no record) or stuck (not terminal)."""
    terminal = {s.value for s in TERMINAL}
    deadline = time.monotonic() + timeout
    while job_ids:
        try:
            found = records(r, prefix, job_ids)
        except redis.ConnectionError:
            found = {}
        if found and all(rec.get("state") in terminal for rec in found.values()):
            return found
        if time.monotonic() > deadline:
            return found or records(r, prefix, job_ids)
        time.sleep(0.1)
    return {}


@dataclass
class Audit:
    """Per-job verdicts from the records: lost (no record), stuck (not terminal), duplicated (ended twice)."""

    records: dict[str, dict[str, str]]

    @property
    def lost(self) -> list[str]:
        return [j for j, rec in self.records.items() if not rec]

    @property
    def stuck(self) -> list[str]:
        terminal = {s.value for s in TERMINAL}
        return [j for j, rec in self.records.items() if rec and rec.get("state") not in terminal]

    @property
    def duplicated(self) -> list[str]:
        return [j for j, rec in self.records.items() if int(rec.get("ends") or 0) > 1]

    def states(self) -> dict[str, int]:
        out: dict[str, int] = {}
        for rec in self.records.values():
            out[rec.get("state", "lost")] = out.get(rec.get("state", "lost"), 0) + 1
        return out

    def line(self, scenario: str) -> str:
        return (f"[chaos] {scenario}: {len(self.records)} jobs, states {self.states()}, lost {len(self.lost)}, "
                f"stuck {len(self.stuck)}, duplicated {len(self.duplicated)}")

    def check_exactly_once(self, state: JobState | None = JobState.SUCCEEDED) -> None:
        """None lost, none stuck, each ended exactly once (``ends == 1``), progress complete, in ``state``."""
        problems = {j: self.records[j] for j in (self.lost + self.stuck + self.duplicated)[:5]}
        assert not (self.lost or self.stuck or self.duplicated), (
            f"lost {self.lost[:10]}, stuck {self.stuck[:10]}, duplicated {self.duplicated[:10]}: {problems}")
        wrong_ends = {j: rec.get("ends") for j, rec in self.records.items() if rec.get("ends") != "1"}
        assert not wrong_ends, f"jobs whose terminal state was not written exactly once: {wrong_ends}"
        if state is not None:
            others = {j: (rec["state"], rec.get("error")) for j, rec in self.records.items()
                      if rec["state"] != state.value}
            assert not others, f"jobs not {state.value}: {others}"
        if state == JobState.SUCCEEDED:
            partial = {j: (rec.get("pairs_done"), rec.get("pairs_total")) for j, rec in self.records.items()
                       if rec.get("pairs_done") != rec.get("pairs_total")}
            assert not partial, f"progress not exactly complete (done, total): {partial}"


def check_scores(client: Any, ref: Reference, jobs: dict[str, dict[str, Any]]) -> None:
    """Each job's result: every document scored, no per-document error, the fake's exact scores."""
    wrong = {}
    for job_id, job in jobs.items():
        result = client.result(job_id, timeout=0)
        expected = ref.scores(job)
        if result["errors"] or result["scores"] != expected:
            wrong[job_id] = {"errors": result["errors"], "scores": result["scores"], "expected": expected}
    assert not wrong, f"{len(wrong)} jobs with wrong scores or errors: {dict(list(wrong.items())[:3])}"


def queues_drained(r: redis.Redis, prefix: str) -> bool:
    """No message left in any queue of the prefix, none held (unacknowledged)."""
    lengths = [r.llen(f"{prefix}.{p}") for p in ("high", "normal", "low")]
    return sum(lengths) == 0 and r.hlen("unacked") == 0


# --- Sentinel -----------------------------------------------------------------------------------------------------
class SentinelGroup:
    """One primary, one replica and three Sentinels (quorum 2), all ``redis-server`` processes on loopback."""

    master_name = "chaos"

    def __init__(self) -> None:
        self.primary = Redis()
        self.replica = Redis()
        self.replica.args = ["--replicaof", "127.0.0.1", str(self.primary.port)]
        self.sentinel_ports = [free_port() for _ in range(3)]
        self.sentinels: list[subprocess.Popen[bytes]] = []
        self.workdir = Path(tempfile.mkdtemp(prefix="rerankq-chaos-sentinel-"))

    @property
    def url(self) -> str:
        return ";".join(f"sentinel://127.0.0.1:{p}" for p in self.sentinel_ports) + "/0"

    def start(self) -> SentinelGroup:
        self.primary.start()
        self.replica.start()
        for port in self.sentinel_ports:
            conf = self.workdir / f"sentinel-{port}.conf"
            conf.write_text(f"port {port}\nbind 127.0.0.1\ndir {self.workdir}\n"
                            f"sentinel monitor {self.master_name} 127.0.0.1 {self.primary.port} 2\n"
                            f"sentinel down-after-milliseconds {self.master_name} 1000\n"
                            f"sentinel failover-timeout {self.master_name} 5000\n"
                            f"sentinel parallel-syncs {self.master_name} 1\n")
            with (self.workdir / f"sentinel-{port}.log").open("ab") as out:
                # redis-sentinel is redis-server in Sentinel mode (Debian ships it as its own package: make redis)
                argv = ["redis-sentinel", str(conf)] if shutil.which("redis-sentinel") else \
                    ["redis-server", str(conf), "--sentinel"]
                self.sentinels.append(subprocess.Popen(argv, stdout=out, stderr=subprocess.STDOUT,
                                                       start_new_session=True))
            wait_for_port(port, 10, "redis-sentinel", self.sentinels[-1])
        wait_until(self._ready, 30, "the sentinels to see the replica and each other", step=0.2)
        return self

    def _ready(self) -> bool:
        for port in self.sentinel_ports:
            s = redis.Redis(port=port, socket_timeout=2)
            replicas = s.execute_command("SENTINEL", "REPLICAS", self.master_name)
            peers = s.execute_command("SENTINEL", "SENTINELS", self.master_name)
            s.close()
            if len(replicas) < 1 or len(peers) < 2:
                return False
        link = self.replica.client().info("replication").get("master_link_status")
        return link == "up"

    def master_port(self) -> int:
        s = redis.Redis(port=self.sentinel_ports[0], socket_timeout=2)
        _host, port = s.execute_command("SENTINEL", "GET-MASTER-ADDR-BY-NAME", self.master_name)
        s.close()
        return int(port)

    def stop(self) -> None:
        for proc in self.sentinels:
            stop_process(proc, grace=5.0)
        for server in (self.primary, self.replica):
            if server.proc is not None:
                with contextlib.suppress(ProcessLookupError):
                    server.proc.send_signal(signal.SIGCONT)
            server.stop()
