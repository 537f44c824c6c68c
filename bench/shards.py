"""``python -m bench.shards``: what shards cost per job, and what waiting across shards costs.

For each shard count of ``--shards`` (default ``1,2,3``), in turn and ``--rounds`` times: as many private
redis-servers, one ``fake:hash`` worker per shard (``--shard I``), moto's S3 server; then

1. *per job*: ``submit_many`` + ``as_completed`` of ``--jobs`` jobs of 8 text documents, and the commands every
   server executed meanwhile (``INFO commandstats``: script calls and their inner calls, background beats
   included), per job, with jobs/s;
2. *waiting*: two clients wait on 30 jobs no worker takes (the workers stopped first) for ``--idle`` seconds: the
   one that made them (its notify list on every shard) and another (the jobs' done lists and states); the
   commands per second every server executed meanwhile, by command.

Figures are printed, never asserted. With one shard it is the single-Redis deployment (no shard list).
"""

from __future__ import annotations

import argparse
import collections
import os
import subprocess
import sys
import tempfile
import threading
import time
from contextlib import ExitStack, suppress
from pathlib import Path
from typing import Any

import redis

from bench.throughput import _wait_ready
from rerankq.cli.cluster import RedisServer, S3Server, stop_process
from rerankq.client.client import RerankClient
from rerankq.settings import Settings


def _job(i: int, tag: str, docs: int = 8) -> dict[str, Any]:
    return {"query": {"text": f"{tag} query {i} about a red backpack"},
            "documents": [{"text": f"{tag} document {d} of job {i}"} for d in range(docs)]}


def _calls(servers: list[RedisServer]) -> collections.Counter[str]:
    out: collections.Counter[str] = collections.Counter()
    for server in servers:
        for name, stat in redis.Redis(port=server.port).info("commandstats").items():
            out[name.removeprefix("cmdstat_")] += int(stat["calls"])
    return out


def _start(stack: ExitStack, count: int, s3_url: str) -> tuple[Settings, list[RedisServer], list[Any]]:
    servers = [stack.enter_context(RedisServer()) for _ in range(count)]
    shards = {"RERANKQ_REDIS_SHARDS": ",".join(s.url for s in servers)} if count > 1 else {}
    env = {**os.environ, "RERANKQ_REDIS_URL": servers[0].url, "RERANKQ_S3_ENDPOINT_URL": s3_url, **shards}
    workers = []
    for i in range(count):
        log = stack.enter_context(tempfile.NamedTemporaryFile(prefix="rerankq-bench-shard-", suffix=".log"))  # noqa: SIM115
        proc = subprocess.Popen([sys.executable, "-m", "rerankq.cli", "worker", "--model", "fake:hash", "--device",
                                 "cpu", *(["--shard", str(i)] if count > 1 else [])], env={**env},
                                stdout=log, stderr=subprocess.STDOUT)
        stack.callback(stop_process, proc, 30.0)
        workers.append((proc, Path(log.name)))
    for proc, log in workers:
        _wait_ready(proc, log)
    settings = Settings(redis_url=servers[0].url, s3_endpoint_url=s3_url,
                        redis_shards=[s.url for s in servers] if count > 1 else [])
    return settings, servers, [proc for proc, _ in workers]


def per_job(settings: Settings, servers: list[RedisServer], jobs: int) -> dict[str, float]:
    with RerankClient(settings) as client:
        list(client.as_completed(client.submit_many([_job(i, "warm") for i in range(50)]), timeout=120))
        time.sleep(1.0)
        before, t0 = _calls(servers), time.perf_counter()
        ids = client.submit_many([_job(i, "cost") for i in range(jobs)])
        ended = list(client.as_completed(ids, timeout=600))
        seconds, after = time.perf_counter() - t0, _calls(servers)
    assert len(ended) == jobs
    return {"commands_per_job": round(sum((after - before).values()) / jobs, 2), "jobs_per_s": round(jobs / seconds, 1)}


def waiting(settings: Settings, servers: list[RedisServer], idle: float) -> dict[str, float]:
    maker, other = RerankClient(settings), RerankClient(settings)
    ids = maker.submit_many([_job(i, "idle", 2) for i in range(30)])

    def wait(client: RerankClient) -> None:
        with suppress(TimeoutError):
            list(client.as_completed(ids, timeout=idle + 3))

    threads = [threading.Thread(target=wait, args=(c,), daemon=True) for c in (maker, other)]
    for thread in threads:
        thread.start()
    time.sleep(1.0)
    before, t0 = _calls(servers), time.monotonic()
    time.sleep(idle)
    delta, seconds = _calls(servers) - before, time.monotonic() - t0
    for thread in threads:
        thread.join()
    maker.close()
    other.close()
    per_s = {name: round(n / seconds, 2) for name, n in sorted(delta.items()) if name not in ("info", "hello")}
    return {"total_per_s": round(sum(per_s.values()), 2), **per_s}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.shards", description=__doc__.split("\n\n")[0])
    parser.add_argument("--shards", default="1,2,3", help="shard counts to run, comma-separated")
    parser.add_argument("--jobs", type=int, default=300)
    parser.add_argument("--idle", type=float, default=20.0, help="seconds the two clients wait on stuck jobs")
    parser.add_argument("--rounds", type=int, default=2)
    args = parser.parse_args(argv)
    counts = [int(x) for x in args.shards.split(",")]
    with S3Server() as s3:
        for round_ in range(args.rounds):
            for count in counts:
                with ExitStack() as stack:
                    settings, servers, workers = _start(stack, count, s3.url)
                    cost = per_job(settings, servers, args.jobs)
                    for proc in workers:
                        stop_process(proc, 30.0)
                    idle = waiting(settings, servers, args.idle)
                print(f"[shards] round {round_ + 1}, {count} shard(s): {cost['commands_per_job']} commands executed "
                      f"per job ({args.jobs} jobs of 8 text documents, {cost['jobs_per_s']} jobs/s); two clients "
                      f"waiting on 30 stuck jobs: {idle}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
