"""``rerankq bench``: throughput end to end (SDK → Redis → worker → results) and of the scorer alone, on
the same pairs, in the same run (docs/OPERATIONS.md, *Capacity*).

By default it starts a private cluster (redis-server, moto's S3 server, one ``rerankq worker`` subprocess
with the tiny model, built offline on first use); ``--redis-url`` targets a running deployment instead
(``--metrics-url`` then points at one worker's metrics for the batch figures). Each ``--workload
JOBSxDOCS:KIND`` is submitted at once with ``submit_many``; KIND is ``text`` (text query and documents),
``image`` (image documents), ``image-query`` (an image query, text documents) or ``video-query`` (a video
query, text documents).

The scorer-alone figure is a ceiling: the private worker records its forward passes (``batch.record_path``)
and the bench replays exactly those batches on the same pairs (``bench.replay``), after each end-to-end run,
never during one; each figure is the best of ``--repeats`` alternating runs. A ratio above 1 is flagged as
noise. Against a running deployment there is no record: the replay then uses the planner's batches.
``--lone N`` measures the latency of N lone jobs, one at a time, on the idle worker.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import random
import subprocess
import sys
import tempfile
import time
from contextlib import ExitStack
from pathlib import Path
from typing import Any

from bench.replay import BatchLog, Replay, wait_quiet
from rerankq.cli.cluster import metric_values
from rerankq.settings import Settings

BUCKET = "rerankq-bench"
KINDS = ("text", "image", "image-query", "video-query")
WORDS = ["red", "blue", "green", "backpack", "bottle", "nylon", "leather", "trail", "city", "light", "heavy",
         "pocket", "strap", "zip", "water", "camera", "lens", "shoe", "boot", "jacket", "rain", "warm", "cold",
         "summer", "winter", "travel", "laptop", "cable", "charger", "phone", "case"]


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--workload", action="append", default=None, metavar="JOBSxDOCS:KIND",
                   help="KIND: text, image, image-query, video-query; e.g. 500x8:text, 50x32:image-query "
                        "(repeatable; default 100x8:text)")
    p.add_argument("--repeats", type=int, default=3, help="end-to-end runs and replays per workload (best of)")
    p.add_argument("--lone", type=int, default=20, help="lone jobs, one at a time, for idle latency (0 = skip)")
    p.add_argument("--model", default=None, help="model SPEC (default: the tiny model, built on first use)")
    p.add_argument("--device", default="cpu")
    p.add_argument("--redis-url", default=None, help="target a running deployment instead of a private one")
    p.add_argument("--metrics-url", default=None, help="with --redis-url: a worker's /metrics for batch figures")
    p.add_argument("--timeout", type=float, default=1800, help="seconds to wait for a workload")
    p.add_argument("--json", action="store_true", help="print one JSON object")
    p.add_argument("--plot", default=None, metavar="PNG", help="draw throughput and latency over the run to PNG")
    p.add_argument("--redis-cost", nargs=argparse.REMAINDER, default=None, metavar="OPTIONS",
                   help="instead: Redis commands and CPU per job, by phase (bench/redis_cost.py); its own options "
                        "follow, e.g. --redis-cost --run many:300x8:text --json (--redis-cost --help lists them)")
    p.add_argument("--quantization", default=None, metavar="MODES", help="instead: each of these weight "
                   "quantization modes (comma-separated) against full precision on --model (default random:small) "
                   "in one run: memory, pairs/s, agreement of scores (bench/quantization.py)")
    p.set_defaults(func=run_bench)


def parse_workload(text: str) -> tuple[int, int, str]:
    try:
        shape, _, kind = text.partition(":")
        jobs, docs = (int(x) for x in shape.lower().split("x"))
    except ValueError:
        raise SystemExit(f"--workload {text!r}: expected JOBSxDOCS:KIND, e.g. 500x8:text") from None
    if kind not in KINDS or jobs < 1 or docs < 1:
        raise SystemExit(f"--workload {text!r}: KIND is one of {', '.join(KINDS)}; JOBS and DOCS positive")
    return jobs, docs, kind


def make_requests(jobs: int, docs: int, kind: str, media: dict[str, list[str]], seed: int = 0
                  ) -> list[dict[str, Any]]:
    rng = random.Random(seed)

    def text(lo: int, hi: int) -> str:
        return " ".join(rng.choice(WORDS) for _ in range(rng.randint(lo, hi)))

    def query() -> dict[str, Any]:
        if kind == "image-query":
            return {"text": text(2, 6), "image": rng.choice(media["images"])}
        if kind == "video-query":
            return {"text": text(2, 6), "video": rng.choice(media["videos"])}
        return {"text": text(4, 10)}

    def doc() -> dict[str, Any]:
        return {"image": rng.choice(media["images"])} if kind == "image" else {"text": text(20, 60)}

    return [{"query": query(), "documents": [doc() for _ in range(docs)]} for _ in range(jobs)]


def upload_media(s3: Any, kinds: set[str], count: int = 16) -> dict[str, list[str]]:
    """Sample images (and clips, for video queries) in the bench bucket: kind → s3:// references."""
    from rerankq.cli.samples import image_bytes, mp4_bytes, noise_image

    with contextlib.suppress(Exception):  # exists already (a running deployment)
        s3.create_bucket(Bucket=BUCKET)
    media: dict[str, list[str]] = {"images": [], "videos": []}
    if kinds & {"image", "image-query"}:
        for i in range(count):
            width, height = 96 + 32 * (i % 5), 96 + 32 * (i % 3)
            s3.put_object(Bucket=BUCKET, Key=f"img/{i}.png", Body=image_bytes(noise_image(width, height, seed=i)))
            media["images"].append(f"s3://{BUCKET}/img/{i}.png")
    if "video-query" in kinds:
        for i in range(2):
            s3.put_object(Bucket=BUCKET, Key=f"clip/{i}.mp4", Body=mp4_bytes(seconds=4.0, fps=10, seed=i))
            media["videos"].append(f"s3://{BUCKET}/clip/{i}.mp4")
    return media


class Scrape:
    """Batch histograms from a worker's /metrics (sums and counts)."""

    NAMES = ("rerankq_batch_pairs", "rerankq_batch_jobs", "rerankq_batch_padding_ratio")

    def __init__(self, url: str | None) -> None:
        self.url = url

    def read(self) -> dict[str, float]:
        if not self.url:
            return {}
        return metric_values(self.url, {f"{n}_{s}" for n in self.NAMES for s in ("sum", "count")})

    @classmethod
    def means(cls, before: dict[str, float], after: dict[str, float]) -> dict[str, float | None]:
        out: dict[str, float | None] = {}
        for name, key in zip(cls.NAMES, ("mean_batch_pairs", "mean_batch_jobs", "padding_ratio"), strict=True):
            count = after.get(f"{name}_count", 0) - before.get(f"{name}_count", 0)
            total = after.get(f"{name}_sum", 0) - before.get(f"{name}_sum", 0)
            out[key] = round(total / count, 4) if count else None
        out["forward_passes"] = after.get("rerankq_batch_pairs_count", 0) - before.get("rerankq_batch_pairs_count", 0)
        return out


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, round(q * (len(ordered) - 1))))]


def run_workload(client: Any, scrape: Scrape, requests: list[dict[str, Any]], timeout: float) -> dict[str, Any]:
    before = scrape.read()
    t0 = time.time()
    ids = client.submit_many(requests)
    docs = {job_id: len(r["documents"]) for job_id, r in zip(ids, requests, strict=True)}
    samples: list[dict[str, float]] = []  # one per finished job, for --plot
    for job_id, outcome in client.as_completed(ids, timeout=timeout):
        if isinstance(outcome, Exception):
            raise RuntimeError(f"bench job failed: {outcome}")
        now = time.time() - t0
        done = samples[-1] if samples else {"pairs_done": 0, "jobs_done": 0}
        samples.append({"t": now, "pairs_done": done["pairs_done"] + docs[job_id],
                        "jobs_done": done["jobs_done"] + 1, "latency": now})
    wall = time.time() - t0
    statuses = [client.status(job_id) for job_id in ids]
    latencies = [s["finished_at"] - s["created_at"] for s in statuses]
    pairs = sum(len(r["documents"]) for r in requests)
    return {"jobs": len(ids), "pairs": pairs, "wall_s": round(wall, 3), "e2e_pairs_per_s": round(pairs / wall, 2),
            "jobs_per_s": round(len(ids) / wall, 2), "p50_latency_s": round(percentile(latencies, 0.5), 4),
            "p95_latency_s": round(percentile(latencies, 0.95), 4), **Scrape.means(before, scrape.read()),
            "_samples": samples, "_ids": ids}


def redis_counters(client: Any) -> tuple[float, float]:
    """(commands processed, CPU seconds used) of the Redis server so far, from ``INFO``. Every client's work
    counts: the workers', this producer's submits and polls, Flower's if it runs."""
    info = client.redis.info()
    return float(info["total_commands_processed"]), float(info["used_cpu_sys"]) + float(info["used_cpu_user"])


def measure_workload(client: Any, scrape: Scrape, replay: Any, log: Any, requests: list[dict[str, Any]],
                     args: argparse.Namespace, worker_pid: int | None = None) -> dict[str, Any]:
    """``--repeats`` end-to-end runs, each followed (never overlapped) by a replay of the forward passes the
    worker ran for it; the best of each. Without a worker record, the planner's batches are replayed."""
    runs, ceilings = [], []
    for _ in range(args.repeats):
        mark = log.mark() if log else 0
        before = redis_counters(client)
        runs.append(run_workload(client, scrape, requests, args.timeout))
        after = redis_counters(client)
        runs[-1]["redis_commands_per_job"] = round((after[0] - before[0]) / len(requests), 1)
        runs[-1]["redis_cpu_ms_per_job"] = round(1000 * (after[1] - before[1]) / len(requests), 3)
        batches = log.batches_since(mark, runs[-1]["_ids"]) if log else replay.planned()
        wait_quiet(worker_pid)
        ceilings.append(replay.pairs_per_s(batches))
        wait_quiet(worker_pid)
    best = max(runs, key=lambda r: r["e2e_pairs_per_s"])
    figures = {**best, "e2e_runs_pairs_per_s": [r["e2e_pairs_per_s"] for r in runs],
               "scorer_pairs_per_s": round(max(ceilings), 2), "scorer_replayed": bool(log),
               "scorer_runs_pairs_per_s": [round(c, 2) for c in ceilings]}
    figures["e2e_vs_scorer"] = round(figures["e2e_pairs_per_s"] / figures["scorer_pairs_per_s"], 3)
    figures["noise"] = figures["e2e_vs_scorer"] > 1  # end to end cannot beat its own forward passes
    return figures


def lone_latency(client: Any, n: int) -> dict[str, float]:
    latencies = []
    for i in range(n):
        t0 = time.perf_counter()
        client.result(client.submit({"query": {"text": f"lone {i}"},
                                     "documents": [{"text": "a short document"}] * 4}), timeout=60)
        latencies.append(time.perf_counter() - t0)
    return {"lone_p50_latency_s": round(percentile(latencies, 0.5), 4),
            "lone_p95_latency_s": round(percentile(latencies, 0.95), 4)}


def _start_cluster(stack: ExitStack, args: argparse.Namespace, model: str, record: Path
                   ) -> tuple[Settings, str, int]:
    from rerankq.cli.cluster import RedisServer, S3Server, free_port, stop_process

    redis_server = stack.enter_context(RedisServer())
    s3_server = stack.enter_context(S3Server())
    port = free_port()
    env = {**os.environ, "RERANKQ_REDIS_URL": redis_server.url, "RERANKQ_S3_ENDPOINT_URL": s3_server.url,
           "RERANKQ_METRICS_PORT": str(port), "RERANKQ_ALLOW_FILE_URLS": "true",
           "RERANKQ_BATCH__RECORD_PATH": str(record)}
    log = stack.enter_context(tempfile.NamedTemporaryFile(prefix="rerankq-bench-worker-", suffix=".log"))  # noqa: SIM115
    proc = subprocess.Popen([sys.executable, "-m", "rerankq.cli", "worker", "--model", model,
                             "--device", args.device], env=env, stdout=log, stderr=subprocess.STDOUT)
    stack.callback(stop_process, proc, 30.0)
    _wait_ready(proc, Path(log.name))
    return (Settings(redis_url=redis_server.url, s3_endpoint_url=s3_server.url), f"http://127.0.0.1:{port}/metrics",
            proc.pid)


def _wait_ready(proc: subprocess.Popen[bytes], log: Path, timeout: float = 600) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise SystemExit(f"worker exited:\n{log.read_text(errors='replace')[-3000:]}")
        if b" ready." in log.read_bytes():
            return
        time.sleep(0.2)
    raise SystemExit(f"worker not ready after {timeout} s")


def run_bench(args: argparse.Namespace) -> int:
    if args.redis_cost is not None:
        from bench.redis_cost import main

        return main(args.redis_cost, prog="rerankq bench --redis-cost")
    if args.quantization is not None:
        from bench import quantization

        return quantization.main(["--modes", args.quantization, "--model", args.model or "random:small",
                                  "--device", args.device, *(["--json"] if args.json else [])])
    from rerankq.cli.cluster import default_tiny_model_dir
    from rerankq.client.client import RerankClient
    from rerankq.worker.main import load

    model = args.model
    if model is None:
        from rerankq.models.qwen3vl.tiny import write_tiny_model

        model = str(default_tiny_model_dir())
        if not (Path(model) / "config.json").exists():
            write_tiny_model(model)
    workloads = [parse_workload(w) for w in args.workload or ["100x8:text"]]
    with ExitStack() as stack:
        log, pid = None, None
        if args.redis_url:
            settings, metrics_url = Settings(redis_url=args.redis_url), args.metrics_url
        else:
            record = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="rerankq-bench-"))) / "passes.jsonl"
            log = BatchLog(record)
            settings, metrics_url, pid = _start_cluster(stack, args, model, record)
        client = stack.enter_context(RerankClient(settings))
        media = upload_media(client.results.client, {k for *_, k in workloads})
        scorer = load(settings, model, args.device)
        report: dict[str, Any] = {"device": str(scorer.device), "model": scorer.name, "workloads": []}
        for i, (jobs, docs, kind) in enumerate(workloads):
            requests = make_requests(jobs, docs, kind, media, seed=i)
            replay = Replay(scorer, settings, requests)
            figures = measure_workload(client, Scrape(metrics_url), replay, log, requests, args, pid)
            report["workloads"].append({"workload": f"{jobs}x{docs}:{kind}", **figures})
        if args.lone:
            report.update(lone_latency(client, args.lone))
    if args.plot:
        _plot(report, args.plot)
    for w in report["workloads"]:
        w.pop("_samples", None)
        w.pop("_ids", None)
    first = {k: v for k, v in report["workloads"][0].items() if k != "workload"}
    report = {**first, **report}
    print(json.dumps(report) if args.json else render(report))
    return 0


def _plot(report: dict[str, Any], path: str) -> None:
    """Workloads one after another on one time axis (each job's latency is submit-to-result), each marked,
    with its scorer-alone ceiling; the best end-to-end run of each."""
    from bench.plot import plot_bench

    samples: list[dict[str, float]] = []
    marks: list[dict[str, Any]] = []
    offset = pairs = jobs = 0.0
    for w in report["workloads"]:
        for s in w["_samples"]:
            samples.append({"t": offset + s["t"], "pairs_done": pairs + s["pairs_done"],
                            "jobs_done": jobs + s["jobs_done"], "latency": s["latency"]})
        marks.append({"name": w["workload"], "start": offset, "end": offset + w["wall_s"],
                      "scorer_pairs_per_s": w["scorer_pairs_per_s"]})
        if samples:
            offset, pairs, jobs = samples[-1]["t"], samples[-1]["pairs_done"], samples[-1]["jobs_done"]
    plot_bench(samples, path, title=f"rerankq bench on {report['model']} ({report['device']}): best run of each "
               "workload", workloads=marks)
    print(f"plot written to {path}", file=sys.stderr)


def render(report: dict[str, Any]) -> str:
    lines = [f"model {report['model']} on {report['device']}"]
    for w in report["workloads"]:
        lines.append(f"{w['workload']:>14}: end to end {w['e2e_pairs_per_s']:.1f} pairs/s {w['jobs_per_s']:.1f} jobs/s"
                     f" | scorer alone {w['scorer_pairs_per_s']:8.1f} pairs/s "
                     f"({'replayed' if w['scorer_replayed'] else 'planned'}; ratio {w['e2e_vs_scorer']:.2f}"
                     f"{' NOISE: above 1, rerun with more jobs' if w['noise'] else ''})"
                     f" | latency p50 {w['p50_latency_s']:.3f}s p95 {w['p95_latency_s']:.3f}s"
                     f" | per pass {w['mean_batch_pairs']} pairs, {w['mean_batch_jobs']} jobs,"
                     f" padding {w['padding_ratio']}"
                     f" | Redis {w['redis_commands_per_job']} commands, {w['redis_cpu_ms_per_job']} CPU-ms per job")
    if "lone_p50_latency_s" in report:
        lines.append(f"lone job on an idle worker: p50 {report['lone_p50_latency_s']:.3f}s "
                     f"p95 {report['lone_p95_latency_s']:.3f}s")
    return "\n".join(lines)
