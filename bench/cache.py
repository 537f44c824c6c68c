"""Score cache benchmark: the same workload twice, cold then warm, and what the cache saved.

``python -m bench.cache [--model SPEC] [--workload 100x8:text] [--json]`` starts a private cluster
(redis-server for the broker, a second one for the cache with ``maxmemory`` and ``allkeys-lru``, moto's S3
server, one ``rerankq worker`` with ``RERANKQ_CACHE__REDIS_URL``), then for each ``--workload JOBSxDOCS:KIND``
(the kinds of ``rerankq bench``) submits the jobs at once with ``"cache": false`` and waits (off: what the
cache's look-ups cost is the difference to cold), empties the cache and submits them again (cold), and once more
(warm), each time under new ids. It prints, per workload and run: wall time, pairs/s, jobs/s, p50 and p95
latency, the hit ratio from the worker's metrics (hits / (hits + misses) in that run), the pairs results report
as cached (``usage.cached_pairs``), and the warm run's speed-up over cold; it checks that the warm scores are
exactly the cold ones. The default model is the tiny checkpoint on CPU; ``fake:h100-2b`` models a GPU's time.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from contextlib import ExitStack
from pathlib import Path
from typing import Any

import redis

from bench.throughput import KINDS, make_requests, metric_values, parse_workload, percentile, upload_media
from bench.throughput import _wait_ready as wait_ready
from rerankq.settings import Settings

CACHE_METRICS = {f"rerankq_cache_{n}_total" for n in ("hits", "misses", "pairs_saved", "errors")}


def start_cluster(stack: ExitStack, model: str, device: str) -> tuple[Settings, str, str]:
    """Broker, cache and S3 servers and one worker; returns its settings, metrics URL and the cache's URL."""
    from rerankq.cli.cluster import CACHE_ARGS, RedisServer, S3Server, free_port, stop_process

    broker = stack.enter_context(RedisServer())
    cache = stack.enter_context(RedisServer(args=CACHE_ARGS))
    s3_server = stack.enter_context(S3Server())
    port = free_port()
    env = {**os.environ, "RERANKQ_REDIS_URL": broker.url, "RERANKQ_S3_ENDPOINT_URL": s3_server.url,
           "RERANKQ_METRICS_PORT": str(port), "RERANKQ_CACHE__REDIS_URL": cache.url}
    log = stack.enter_context(tempfile.NamedTemporaryFile(prefix="rerankq-cache-bench-", suffix=".log"))  # noqa: SIM115
    proc = subprocess.Popen([sys.executable, "-m", "rerankq.cli", "worker", "--model", model, "--device", device],
                            env=env, stdout=log, stderr=subprocess.STDOUT)
    stack.callback(stop_process, proc, 30.0)
    wait_ready(proc, Path(log.name))
    settings = Settings(redis_url=broker.url, s3_endpoint_url=s3_server.url)
    return settings, f"http://127.0.0.1:{port}/metrics", cache.url


def one_run(client: Any, metrics_url: str, requests: list[dict[str, Any]], timeout: float) -> dict[str, Any]:
    """Submit every job at once, wait for all; figures of the run and its results."""
    before = metric_values(metrics_url, CACHE_METRICS)
    t0 = time.perf_counter()
    ids = client.submit_many(requests)
    results = {job_id: outcome for job_id, outcome in client.as_completed(ids, timeout=timeout)}
    wall = time.perf_counter() - t0
    failed = [r for r in results.values() if isinstance(r, Exception)]
    if failed:
        raise RuntimeError(f"bench job failed: {failed[0]}")
    after = metric_values(metrics_url, CACHE_METRICS)
    delta = {name.removeprefix("rerankq_cache_").removesuffix("_total"): after.get(name, 0) - before.get(name, 0)
             for name in CACHE_METRICS}
    statuses = client.statuses(ids)
    latencies = [s["finished_at"] - s["created_at"] for s in statuses]
    pairs = sum(len(r["documents"]) for r in requests)
    looked = delta["hits"] + delta["misses"]
    return {"wall_s": round(wall, 3), "e2e_pairs_per_s": round(pairs / wall, 2),
            "jobs_per_s": round(len(ids) / wall, 2), "p50_latency_s": round(percentile(latencies, 0.5), 4),
            "p95_latency_s": round(percentile(latencies, 0.95), 4),
            "hit_ratio": round(delta["hits"] / looked, 4) if looked else None,
            "cached_pairs": sum(results[i]["usage"]["cached_pairs"] for i in ids),
            "tokens_scored": sum(results[i]["usage"]["tokens"] for i in ids),
            "cache_errors": delta["errors"], "_scores": [results[i]["scores"] for i in ids]}


def measure(client: Any, metrics_url: str, cache_url: str, requests: list[dict[str, Any]], timeout: float,
            repeats: int) -> dict[str, Any]:
    """Off (jobs opt out), cold (an empty cache), warm (the same jobs again): ``repeats`` times, best of each."""
    runs: dict[str, list[dict[str, Any]]] = {"off": [], "cold": [], "warm": []}
    identical = True
    for _ in range(repeats):
        runs["off"].append(one_run(client, metrics_url, [{**r, "cache": False} for r in requests], timeout))
        with redis.Redis.from_url(cache_url) as cache:
            cache.flushall()
        runs["cold"].append(one_run(client, metrics_url, requests, timeout))
        runs["warm"].append(one_run(client, metrics_url, requests, timeout))
        identical = identical and runs["cold"][-1]["_scores"] == runs["warm"][-1]["_scores"]
    best = {name: min(found, key=lambda r: r["wall_s"]) for name, found in runs.items()}
    for found in runs.values():
        for r in found:
            r.pop("_scores")
    return {"pairs": sum(len(r["documents"]) for r in requests), "jobs": len(requests), **best,
            "speedup": round(best["cold"]["wall_s"] / best["warm"]["wall_s"], 2),
            "cold_vs_off": round(best["cold"]["wall_s"] / best["off"]["wall_s"], 3),
            "warm_scores_identical": identical}


def render(report: dict[str, Any]) -> str:
    lines = [f"score cache, model {report['model']} on {report['device']}: each workload without the cache (off), "
             "then into an empty one (cold), then again (warm); best of each"]
    for w in report["workloads"]:
        lines.append(f"{w['workload']:>14}: {w['jobs']} jobs, {w['pairs']} pairs; warm speed-up {w['speedup']:.2f}x; "
                     f"cold/off time {w['cold_vs_off']:.3f}; warm scores identical: {w['warm_scores_identical']}")
        for name in ("off", "cold", "warm"):
            r = w[name]
            ratio = "n/a" if r["hit_ratio"] is None else f"{r['hit_ratio']:.1%}"
            lines.append(f"{'':>16}{name}: {r['wall_s']:.2f}s, {r['e2e_pairs_per_s']:.1f} pairs/s, "
                         f"{r['jobs_per_s']:.1f} jobs/s, latency p50 {r['p50_latency_s']:.3f}s "
                         f"p95 {r['p95_latency_s']:.3f}s | hit ratio {ratio}, {r['cached_pairs']} pairs cached, "
                         f"{r['tokens_scored']} tokens scored, {r['cache_errors']:.0f} cache errors")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    from rerankq.cli.cluster import default_tiny_model_dir
    from rerankq.client.client import RerankClient

    p = argparse.ArgumentParser(prog="python -m bench.cache", description=__doc__.split("\n")[0])
    p.add_argument("--workload", action="append", default=None, metavar="JOBSxDOCS:KIND",
                   help=f"KIND: {', '.join(KINDS)} (repeatable; default 100x8:text and 30x8:image)")
    p.add_argument("--model", default=None, help="model SPEC (default: the tiny model, built on first use)")
    p.add_argument("--device", default="cpu")
    p.add_argument("--repeats", type=int, default=3, help="off, cold and warm runs per workload (best of)")
    p.add_argument("--timeout", type=float, default=1800, help="seconds to wait for one run")
    p.add_argument("--json", action="store_true", help="print one JSON object")
    args = p.parse_args(argv)
    model = args.model
    if model is None:
        from rerankq.models.qwen3vl.tiny import write_tiny_model

        model = str(default_tiny_model_dir())
        if not (Path(model) / "config.json").exists():
            write_tiny_model(model)
    workloads = [parse_workload(w) for w in args.workload or ["100x8:text", "30x8:image"]]
    report: dict[str, Any] = {"model": model, "device": args.device, "workloads": []}
    with ExitStack() as stack:
        settings, metrics_url, cache_url = start_cluster(stack, model, args.device)
        client = stack.enter_context(RerankClient(settings))
        media = upload_media(client.results.client, {kind for *_, kind in workloads})
        for i, (jobs, docs, kind) in enumerate(workloads):
            requests = make_requests(jobs, docs, kind, media, seed=i)
            figures = measure(client, metrics_url, cache_url, requests, args.timeout, args.repeats)
            report["workloads"].append({"workload": f"{jobs}x{docs}:{kind}", **figures})
    print(json.dumps(report) if args.json else render(report))
    return 0


if __name__ == "__main__":
    sys.exit(main())
