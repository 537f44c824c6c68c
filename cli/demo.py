"""``rerankq demo``: the embedded default, end to end on one machine.

Starts a private ``redis-server``, an in-process S3 endpoint seeded with generated images, a short video
and texts, and one worker process (the tiny random-weight model, or ``--model``); submits a mixed batch of
jobs through the SDK, shows progress, prints the ranked results and the throughput, and stops everything
it started: on success, on error, on Ctrl-C and on SIGTERM.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import logging
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from types import FrameType
from typing import Any, TextIO

from rerankq.cli.cluster import RedisServer, S3Server, default_tiny_model_dir, free_port, stop_process, wait_for_port
from rerankq.cli.options import add_quantization_argument

BUCKET = "rerankq-demo"
REAL_WEIGHTS_HINT = "rerankq demo --model Qwen/Qwen3-VL-Reranker-2B --device cuda:0"
SHAPES = {  # name -> (shape, fill colour)
    "red-circle": ("ellipse", (220, 30, 30)),
    "blue-square": ("rectangle", (30, 60, 220)),
    "green-triangle": ("triangle", (30, 170, 60)),
    "yellow-circle": ("ellipse", (240, 210, 20)),
}


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--model", default=None, help="model SPEC (default: the tiny random-weight model, "
                        f"built once into {default_tiny_model_dir()})")
    parser.add_argument("--device", default="cpu", help="cpu, cuda, cuda:N (default: cpu)")
    add_quantization_argument(parser)
    parser.add_argument("--repeat", type=int, default=1, help="submit the sample batch this many times")
    parser.add_argument("--timeout", type=float, default=600, help="seconds to wait for the jobs")
    parser.add_argument("--serve", action="store_true", help="then keep everything running with the HTTP gateway "
                        "and its web console, until Ctrl-C")
    parser.add_argument("--port", type=int, default=8000, help="the gateway's port with --serve (0 = any free one)")
    parser.set_defaults(func=run_demo)


# --- sample media and jobs ------------------------------------------------------------------------------


def _shape_png(shape: str, colour: tuple[int, int, int]) -> bytes:
    from PIL import Image, ImageDraw

    image = Image.new("RGB", (256, 192), (245, 245, 245))
    draw = ImageDraw.Draw(image)
    box = (64, 32, 192, 160)
    if shape == "triangle":
        draw.polygon([(128, 32), (192, 160), (64, 160)], fill=colour)
    else:
        getattr(draw, shape)(box, fill=colour)
    buf = io.BytesIO()
    image.save(buf, format="PNG")
    return buf.getvalue()


def seed_media(s3: Any) -> dict[str, str]:
    """Upload the sample images and video; returns name -> s3:// reference."""
    from rerankq.cli.samples import mp4_bytes

    s3.create_bucket(Bucket=BUCKET)
    refs = {}
    for name, (shape, colour) in SHAPES.items():
        s3.put_object(Bucket=BUCKET, Key=f"images/{name}.png", Body=_shape_png(shape, colour))
        refs[name] = f"s3://{BUCKET}/images/{name}.png"
    s3.put_object(Bucket=BUCKET, Key="videos/gradient.mp4", Body=mp4_bytes(seconds=2.0, fps=4))
    refs["video"] = f"s3://{BUCKET}/videos/gradient.mp4"
    refs["missing"] = f"s3://{BUCKET}/images/does-not-exist.png"
    return refs


def sample_jobs(refs: dict[str, str]) -> list[dict[str, Any]]:
    """A mixed batch: text, image, video and multi-image sides; priorities; top_n; one unreadable document."""
    return [
        {"query": {"text": "a lightweight backpack for hiking"}, "priority": "high", "documents": [
            {"text": "Trail backpack, 22 l, nylon, side bottle pocket"}, {"text": "Leather office briefcase"},
            {"text": "Ultralight daypack for mountain hikes"}, {"text": "Rolling suitcase, 80 l"},
            {"text": "Waterproof hiking boots"}]},
        {"query": {"text": "a red circle"}, "documents": [
            {"image": refs["red-circle"]}, {"image": refs["blue-square"]}, {"image": refs["green-triangle"]},
            {"image": refs["yellow-circle"]}, {"image": refs["missing"]}]},
        {"query": {"image": refs["blue-square"]}, "documents": [
            {"text": "a blue square"}, {"text": "a red circle"}, {"image": refs["blue-square"]},
            {"text": "a green shape", "image": refs["green-triangle"]}]},
        {"query": {"text": "a moving colour gradient"}, "fps": 2.0, "max_frames": 8, "documents": [
            {"video": refs["video"]}, {"image": refs["yellow-circle"]}, {"text": "a still photo of a cat"}]},
        {"query": {"text": "two round shapes", "image": refs["yellow-circle"]}, "documents": [
            {"text": "circles", "image": [refs["red-circle"], refs["yellow-circle"]]},
            {"image": [refs["blue-square"], refs["green-triangle"]]}]},
        {"query": {"text": "rerank queue"}, "priority": "low", "top_n": 3, "documents": [
            {"text": "Celery workers pull jobs from Redis"}, {"text": "A queue of people at a bakery"},
            {"text": "Reranking orders candidates by relevance"}, {"text": "GPU batching by token budget"},
            {"text": "Prometheus scrapes worker metrics"}]},
    ]


# --- the worker process ---------------------------------------------------------------------------------


# Linux: the worker gets SIGTERM if the demo dies without cleaning up (SIGKILL, OOM), then becomes the worker.
_DIE_WITH_PARENT = """
import ctypes, os, signal, sys
try:
    ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG
except (OSError, AttributeError):
    pass
if os.getppid() != int(sys.argv[1]):
    sys.exit(0)
os.execv(sys.executable, [sys.executable, *sys.argv[2:]])
"""


def start_worker(spec: str, device: str, env: dict[str, str], log: TextIO,
                 quantization: str | None = None) -> subprocess.Popen[bytes]:
    """``rerankq worker`` in its own session (its own process group), so that stopping it stops all of it."""
    argv = ["-m", "rerankq.cli", "worker", "--model", spec, "--device", device]
    argv += ["--quantization", quantization] if quantization else []
    if sys.platform.startswith("linux"):
        argv = ["-c", _DIE_WITH_PARENT, str(os.getpid()), *argv]
    return subprocess.Popen([sys.executable, *argv], env=env, stdin=subprocess.DEVNULL, stdout=log,
                            stderr=subprocess.STDOUT, start_new_session=True)


def stop_worker(proc: subprocess.Popen[bytes], grace: float = 10.0) -> None:
    """SIGTERM the worker's process group (Celery's warm shutdown), SIGKILL it after ``grace`` seconds."""
    stop_process(proc, grace, group=True)


def wait_ready(proc: subprocess.Popen[bytes], metrics_port: int, log_path: Path, timeout: float) -> None:
    """The worker serves metrics once its model is loaded and it is about to consume."""
    try:
        wait_for_port(metrics_port, timeout, "the worker", proc)  # type: ignore[arg-type]
    except RuntimeError as exc:
        tail = log_path.read_text(errors="replace")[-3000:]
        raise RuntimeError(f"{exc}\n--- end of the worker's log ---\n{tail}") from None


# --- progress, results, throughput ----------------------------------------------------------------------


def wait_for_jobs(client: Any, ids: list[str], totals: list[int], proc: subprocess.Popen[bytes],
                  timeout: float) -> None:
    """Show pairs done / total until every job is terminal."""
    tty = sys.stdout.isatty()
    deadline, last = time.monotonic() + timeout, ""
    while True:
        statuses = [client.status(j) for j in ids]
        done = sum(min(s["progress"]["pairs_done"], t) for s, t in zip(statuses, totals, strict=True))
        finished = sum(s["state"] in ("succeeded", "failed", "cancelled") for s in statuses)
        line = f"progress: {done}/{sum(totals)} pairs, {finished}/{len(ids)} jobs finished"
        if line != last:
            print(("\r" + line) if tty else line, end="" if tty else "\n", flush=True)
            last = line
        if finished == len(ids):
            if tty:
                print()
            return
        if proc.poll() is not None:
            raise RuntimeError(f"the worker exited with code {proc.returncode} before the jobs finished")
        if time.monotonic() > deadline:
            raise TimeoutError(f"jobs unfinished after {timeout:.0f} s")
        time.sleep(0.1)


def describe(side: dict[str, Any], width: int = 46) -> str:
    parts = []
    for kind in ("video", "image"):
        refs = side.get(kind)
        for ref in [refs] if isinstance(refs, str) else refs or []:
            parts.append(f"{kind}:{ref.rsplit('/', 1)[-1]}")
    if side.get("text"):
        parts.append(repr(side["text"]))
    text = " + ".join(parts)
    return text if len(text) <= width else text[: width - 1] + "…"


def print_job(n: int, job: dict[str, Any], status: dict[str, Any], result: dict[str, Any] | Exception) -> None:
    print(f"\njob {n} [{job.get('priority', 'normal')}] query: {describe(job['query'], 70)}  -> {status['state']}")
    if isinstance(result, Exception):
        print(f"  error: {result}")
        return
    if job.get("top_n"):
        print(f"  (top {job['top_n']} of {len(job['documents'])} documents)")
    print(f"  {'rank':>4}  {'doc':>3}  {'score':>6}  document")
    for rank, row in enumerate(result["results"], 1):
        doc = job["documents"][row["index"]]
        print(f"  {rank:>4}  {row['index']:>3}  {row['relevance_score']:6.4f}  {describe(doc)}")
    for err in result.get("errors", []):
        print(f"     -  {err['index']:>3}  {'error':>6}  {err['error']}")


def worker_batch_stats(port: int) -> str:
    """Mean pairs and jobs per forward pass, read from the worker's own /metrics."""
    from rerankq.cli.cluster import metric_values

    values = metric_values(f"http://127.0.0.1:{port}/metrics")
    batches = values.get("rerankq_batch_pairs_count") or 0
    if not batches:
        return "no forward pass recorded"
    passes = f"{int(batches)} forward pass{'es' if batches != 1 else ''}"
    return (f"{passes}, {values['rerankq_batch_pairs_sum'] / batches:.1f} pairs and "
            f"{values['rerankq_batch_jobs_sum'] / batches:.1f} jobs per pass")


# --- the command ----------------------------------------------------------------------------------------


def _model_spec(model: str | None) -> str:
    if model:
        return model
    path = default_tiny_model_dir()
    if not (path / "config.json").exists():
        from rerankq.models.qwen3vl.tiny import write_tiny_model

        print(f"building the tiny random-weight model in {path} (once)")
        path.parent.mkdir(parents=True, exist_ok=True)
        partial = Path(tempfile.mkdtemp(prefix=".tiny-model-", dir=path.parent))
        try:  # built aside and renamed, so an interrupted build is never mistaken for a finished one
            write_tiny_model(partial)
            with contextlib.suppress(OSError):  # another process finished first: use its copy
                partial.rename(path)
        finally:
            shutil.rmtree(partial, ignore_errors=True)
    return str(path)


def _raise_interrupt(signum: int, frame: FrameType | None) -> None:
    raise KeyboardInterrupt(signal.Signals(signum).name)


def run_demo(args: argparse.Namespace) -> int:
    """Exit code 0 when every job succeeded, 1 when one did not, 3 when they did not finish in time, 4 when
    the demo could not start, 130 on Ctrl-C / SIGTERM."""
    started = time.monotonic()
    if not getattr(args, "verbose", False):  # the S3 endpoint's request log would drown the output
        for name in ("", "werkzeug", "botocore", "moto"):
            logging.getLogger(name).setLevel(logging.WARNING)
    previous_int = signal.getsignal(signal.SIGINT)
    # Ctrl-C stops the demo even when it was started from a shell that ignores SIGINT for its background jobs
    # (Python keeps an inherited SIG_IGN): the demo must always be stoppable.
    signal.signal(signal.SIGINT, signal.default_int_handler)
    previous = {sig: signal.signal(sig, _raise_interrupt) for sig in (signal.SIGTERM, signal.SIGHUP)}
    try:
        with contextlib.ExitStack() as stack:
            try:
                return _demo(args, stack, started)
            except KeyboardInterrupt:
                print("\ninterrupted: stopping the worker, Redis and the S3 endpoint", flush=True)
                return 130
            finally:  # a second Ctrl-C must not cut the cleanup short
                for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
                    signal.signal(sig, signal.SIG_IGN)
    except (RuntimeError, TimeoutError) as exc:  # the exit codes of rerankq.cli: 3 timed out, 4 cannot run
        print(f"rerankq demo: {exc}", file=sys.stderr)
        return 3 if isinstance(exc, TimeoutError) else 4
    finally:
        signal.signal(signal.SIGINT, previous_int)
        for sig, handler in previous.items():
            signal.signal(sig, handler)
        print(f"demo wall time: {time.monotonic() - started:.1f} s; every process it started is stopped")


def _demo(args: argparse.Namespace, stack: contextlib.ExitStack, started: float) -> int:
    from rerankq.client.client import RerankClient

    if args.quantization not in (None, "none"):  # a mode this machine cannot run fails here, in one line
        from rerankq.models.options import resolve_dtype
        from rerankq.models.quantization import check

        check(args.quantization, args.device, resolve_dtype(args.device, "auto"))
    redis_server = stack.enter_context(RedisServer())  # first: a missing redis-server fails fast
    s3_server = stack.enter_context(S3Server())
    spec = _model_spec(args.model)
    refs = seed_media(s3_server.client())
    print(f"redis-server at {redis_server.url}; S3 endpoint at {s3_server.url} (bucket {BUCKET})")
    port = free_port()
    env = {**os.environ, "RERANKQ_REDIS_URL": redis_server.url, "RERANKQ_S3_ENDPOINT_URL": s3_server.url,
           "RERANKQ_METRICS_PORT": str(port)}
    log_path = Path(tempfile.mkdtemp(prefix="rerankq-demo-")) / "worker.log"
    stack.callback(shutil.rmtree, log_path.parent, True)
    log = stack.enter_context(log_path.open("w"))
    proc = start_worker(spec, args.device, env, log, args.quantization)
    stack.callback(stop_worker, proc)
    print(f"worker pid {proc.pid} loading {spec} on {args.device} (log: {log_path})")
    wait_ready(proc, port, log_path, timeout=args.timeout)
    print(f"worker ready after {time.monotonic() - started:.1f} s; metrics at http://127.0.0.1:{port}/metrics")
    client = stack.enter_context(RerankClient(redis_url=redis_server.url, s3_endpoint_url=s3_server.url))
    jobs = sample_jobs(refs) * max(args.repeat, 1)
    t0 = time.monotonic()
    ids = client.submit_many(jobs)
    print(f"submitted {len(ids)} jobs ({sum(len(j['documents']) for j in jobs)} pairs) through the SDK")
    wait_for_jobs(client, ids, [len(j["documents"]) for j in jobs], proc, args.timeout)
    elapsed = time.monotonic() - t0
    code = _report(client, ids, jobs, elapsed, port, tiny=args.model is None)
    if args.serve:
        serve(env, stack, proc, args.port or free_port(), log_path.parent)
    return code


def serve(env: dict[str, str], stack: contextlib.ExitStack, worker: subprocess.Popen[bytes], port: int,
          log_dir: Path) -> None:
    """Start ``rerankq gateway`` on the private cluster and keep everything running until Ctrl-C / SIGTERM."""
    gateway_env = {**env, "RERANKQ_GATEWAY__UPLOADS_URI": f"s3://{BUCKET}/uploads/"}
    argv = ["-m", "rerankq.cli", "gateway", "--port", str(port)]
    if sys.platform.startswith("linux"):
        argv = ["-c", _DIE_WITH_PARENT, str(os.getpid()), *argv]
    log = stack.enter_context((log_dir / "gateway.log").open("w"))
    gateway = subprocess.Popen([sys.executable, *argv], env=gateway_env, stdin=subprocess.DEVNULL, stdout=log,
                               stderr=subprocess.STDOUT, start_new_session=True)
    stack.callback(stop_process, gateway, 10.0, True)
    wait_for_port(port, 60, "the gateway", gateway)  # type: ignore[arg-type]
    print(f"\nconsole: http://127.0.0.1:{port}/  (API docs at /docs; Cohere-compatible POST /v2/rerank)\n"
          "serving until Ctrl-C", flush=True)
    while worker.poll() is None and gateway.poll() is None:
        time.sleep(0.5)
    raise RuntimeError("the worker or the gateway exited; stopping the rest")


def _report(client: Any, ids: list[str], jobs: list[dict[str, Any]], elapsed: float, port: int,
            tiny: bool) -> int:
    ok, models = True, set()
    for n, (job_id, job) in enumerate(zip(ids, jobs, strict=True), 1):
        status = client.status(job_id)
        result: dict[str, Any] | Exception
        try:
            done: dict[str, Any] = client.result(job_id, timeout=0)
            result = done
            models.add(str(done["model"]))
        except Exception as exc:  # a failed job is shown, not raised
            result, ok = exc, False
        print_job(n, job, status, result)
    print(f"\nscored by: {', '.join(sorted(models)) or 'no job succeeded'}")  # "NAME [int8]" when quantized
    pairs = sum(len(j["documents"]) for j in jobs)
    print(f"\nthroughput: {pairs} pairs, {len(ids)} jobs in {elapsed:.2f} s = {pairs / elapsed:.1f} pairs/s, "
          f"{len(ids) / elapsed:.2f} jobs/s (submit to last result, one worker)")
    print(f"batching: {worker_batch_stats(port)}")
    if tiny:
        print("\nNOTE: these scores come from a tiny model with RANDOM weights: the ranking is meaningless; the "
              "queue, batching, media and result paths are the real ones.\nWith real weights (a machine with "
              f"the checkpoint or a Hugging Face cache, ideally a GPU): {REAL_WEIGHTS_HINT}")
    return 0 if ok else 1
