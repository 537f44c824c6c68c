"""Fixtures for the queue tests: a real worker subprocess (tiny model) on the private Redis and S3, sample
media in S3, and an in-process reference for the scores."""

from __future__ import annotations

import contextlib
import os
import subprocess
import sys
import time
import urllib.request
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from rerankq.cli.cluster import RedisServer, S3Server, free_port, stop_process
from rerankq.settings import Settings

MEDIA_BUCKET = "media"
RESULTS_BUCKET = "results"


@dataclass
class WorkerProcess:
    """A ``rerankq worker`` subprocess and how to reach it."""

    proc: subprocess.Popen[bytes]
    env: dict[str, str]
    settings: Settings
    metrics_port: int
    log: Path

    def metrics(self) -> str:
        with urllib.request.urlopen(f"http://127.0.0.1:{self.metrics_port}/metrics", timeout=10) as resp:
            return resp.read().decode()

    def metric(self, name: str, labels: str = "") -> float:
        """The value of one sample, e.g. ``metric("rerankq_batch_pairs_count")``, summed over the series whose
        labels include ``labels`` (e.g. ``'state="succeeded"'``); 0 when absent."""
        total = 0.0
        for line in self.metrics().splitlines():
            head, _, value = line.rpartition(" ")
            series, _, rest = head.partition("{")
            if series == name and labels in rest:
                total += float(value)
        return total

    def tail(self) -> str:
        return self.log.read_text(errors="replace")[-4000:]


def wait_for(predicate: Any, timeout: float, what: str) -> None:
    """Poll ``predicate`` every 50 ms until it holds; AssertionError naming ``what`` after ``timeout`` s."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(0.05)
    raise AssertionError(f"timed out waiting for {what}")


def _wait_ready(worker: WorkerProcess, timeout: float = 120) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if worker.proc.poll() is not None:
            raise RuntimeError(f"worker exited with {worker.proc.returncode}:\n{worker.tail()}")
        try:
            worker.metrics()
            if b"ready." in worker.log.read_bytes():  # Celery's "celery@host ready." line
                return
        except OSError:
            pass
        time.sleep(0.2)
    raise RuntimeError(f"worker not ready within {timeout} s:\n{worker.tail()}")


def start_worker(model_dir: Path | str, redis_url: str, s3_url: str, log_dir: Path, **env: str) -> WorkerProcess:
    """Start ``rerankq worker`` on CPU with a model SPEC (the tiny checkpoint, ``fake:hash``, ...); extra
    ``RERANKQ_*`` settings as keywords."""
    port = free_port()
    prefix = f"t{uuid.uuid4().hex[:8]}"
    full_env = {**os.environ, "RERANKQ_REDIS_URL": redis_url, "RERANKQ_S3_ENDPOINT_URL": s3_url,
                "RERANKQ_ALLOW_FILE_URLS": "true", "RERANKQ_METRICS_PORT": str(port),
                "RERANKQ_QUEUE_PREFIX": prefix, "OMP_NUM_THREADS": "1", **env}
    log = log_dir / f"worker-{prefix}.log"
    with log.open("wb") as out:
        proc = subprocess.Popen([sys.executable, "-m", "rerankq.cli", "worker", "--model", str(model_dir),
                                 "--device", "cpu"], env=full_env, stdout=out, stderr=subprocess.STDOUT)
    settings = Settings(redis_url=redis_url, s3_endpoint_url=s3_url, queue_prefix=prefix)
    worker = WorkerProcess(proc, full_env, settings, port, log)
    try:
        _wait_ready(worker)
    except BaseException:
        stop_worker(worker)
        raise
    return worker


def run_clean(worker: WorkerProcess, job: dict[str, Any]) -> dict[str, Any]:
    """Submit ``job`` to ``worker``'s deployment and return its result, which must have no document errors."""
    from rerankq.client import RerankClient

    with RerankClient(worker.settings) as client:
        result: dict[str, Any] = client.result(client.submit(job), timeout=180)
    assert result["errors"] == [], result["errors"]
    return result


def stop_worker(worker: WorkerProcess) -> None:
    stop_process(worker.proc, grace=30.0)


@pytest.fixture(scope="module")
def queue_worker(tiny_model_dir: Path, redis_server: RedisServer, s3_server: S3Server,
                 tmp_path_factory: pytest.TempPathFactory) -> Iterator[WorkerProcess]:
    """One worker subprocess per test module (its own queue prefix); results over 4 KiB go to S3."""
    yield from _module_worker(tiny_model_dir, redis_server, s3_server, tmp_path_factory.mktemp("worker"))


@pytest.fixture(scope="module")
def embed_worker(tiny_embed_dir: Path, redis_server: RedisServer, s3_server: S3Server,
                 tmp_path_factory: pytest.TempPathFactory) -> Iterator[WorkerProcess]:
    """A worker of the tiny Qwen3-VL-Embedding checkpoint, the default model of its own queue prefix (jobs that
    name no model go to it); results over 4 KiB go to S3."""
    yield from _module_worker(tiny_embed_dir, redis_server, s3_server, tmp_path_factory.mktemp("embed-worker"))


def _module_worker(model: Path, redis_server: RedisServer, s3_server: S3Server, log_dir: Path
                   ) -> Iterator[WorkerProcess]:
    """A module's worker of ``model``: results over 4 KiB go to S3, rounds flushed after 50 ms."""
    worker = start_worker(model, redis_server.url, s3_server.url, log_dir, RERANKQ_RESULTS__INLINE_MAX_BYTES="4096",
                          RERANKQ_RESULTS__BUCKET_URI=f"s3://{RESULTS_BUCKET}/large/",
                          RERANKQ_BATCH__FLUSH_INTERVAL_MS="50")
    yield worker
    stop_worker(worker)


@pytest.fixture(scope="session")
def media(s3: Any) -> dict[str, str]:
    """Sample media in S3: two images, an mp4, four frames. Returns name → s3:// reference."""
    from rerankq.cli.samples import image_bytes, mp4_bytes, noise_image

    for bucket in (MEDIA_BUCKET, RESULTS_BUCKET):
        with contextlib.suppress(s3.exceptions.BucketAlreadyOwnedByYou):
            s3.create_bucket(Bucket=bucket)
    objects = {
        "cat.png": image_bytes(noise_image(64, 48, seed=1)),
        "dog.jpg": image_bytes(noise_image(80, 80, seed=2), "JPEG"),
        "clip.mp4": mp4_bytes(seconds=2.0, fps=10, seed=3),
        **{f"frame{i}.png": image_bytes(noise_image(64, 64, seed=10 + i)) for i in range(4)},
    }
    for key, body in objects.items():
        s3.put_object(Bucket=MEDIA_BUCKET, Key=f"q/{key}", Body=body)
    return {key: f"s3://{MEDIA_BUCKET}/q/{key}" for key in objects}


@pytest.fixture(scope="session")
def reference(tiny_model_dir: Path, s3_server: S3Server):  # type: ignore[no-untyped-def]
    """In-process scores of a request (leave out documents that should fail) from the seed-compatible
    ``Qwen3VLReranker.process``, run the official way: one pair per forward pass, no shared prefix."""
    from rerankq.models import Qwen3VLReranker

    model = Qwen3VLReranker(str(tiny_model_dir), device="cpu", torch_dtype="float32",
                            s3_endpoint_url=s3_server.url, share_prefix=False, batch_max_pairs=1)
    return model.process


@dataclass
class GatewayProcess:
    """A ``rerankq gateway`` subprocess: its URL, settings and log."""

    proc: subprocess.Popen[bytes]
    url: str
    settings: Settings
    log: Path

    def tail(self) -> str:
        return self.log.read_text(errors="replace")[-4000:]


def start_gateway(env: dict[str, str], log_dir: Path, **settings: str) -> GatewayProcess:
    """Start ``rerankq gateway`` on a free port with ``env`` (a worker's, to share its Redis and queue prefix)
    plus ``RERANKQ_*`` settings as keywords; returns once ``/healthz`` answers."""
    port = free_port()
    full_env = {**env, "RERANKQ_GATEWAY__UPLOADS_URI": "s3://uploads/u/", **settings}
    log = log_dir / f"gateway-{port}.log"
    with log.open("wb") as out:
        proc = subprocess.Popen([sys.executable, "-m", "rerankq.cli", "gateway", "--port", str(port)],
                                env=full_env, stdout=out, stderr=subprocess.STDOUT)
    gateway = GatewayProcess(proc, f"http://127.0.0.1:{port}", Settings(
        redis_url=full_env["RERANKQ_REDIS_URL"], s3_endpoint_url=full_env.get("RERANKQ_S3_ENDPOINT_URL"),
        queue_prefix=full_env.get("RERANKQ_QUEUE_PREFIX", "rerankq")), log)
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"gateway exited with {proc.returncode}:\n{gateway.tail()}")
        try:
            with urllib.request.urlopen(f"{gateway.url}/healthz", timeout=2):
                return gateway
        except OSError:
            time.sleep(0.1)
    stop_process(proc)
    raise RuntimeError(f"gateway not ready within 60 s:\n{gateway.tail()}")


@pytest.fixture()
def private_redis() -> Iterator[Any]:
    """A redis-server of the test's own (``tests.chaos_kit.Redis``: AOF on, the chaos tests restart it),
    stopped after the test."""
    from tests.chaos_kit import Redis  # chaos_kit imports this module

    server = Redis().start()
    yield server
    server.stop()
