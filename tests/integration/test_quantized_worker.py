"""Quantized workers (``RERANKQ_QUANTIZATION``), real processes on the tiny checkpoint: each CPU-capable mode
scores a mixed text/image job through the queue, within its bounds of full precision
(``tests/integration/test_quantization.py`` says where they come from), says so in the result, the metrics and
the registry, and never reads a full-precision worker's cached scores. A mode this machine cannot run stops
``rerankq worker`` and ``rerankq demo`` at start, in one line."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from bench.quantization import agreement
from rerankq import registry
from rerankq.cli.cluster import CACHE_ARGS, RedisServer, S3Server, stop_process
from rerankq.client import RerankClient
from tests.integration.conftest import WorkerProcess, start_gateway, start_worker, stop_worker
from tests.integration.conftest import run_clean as run
from tests.integration.test_quantization import TINY_BOUNDS

MODES = ["int8", *(pytest.param(m, marks=pytest.mark.slow) for m in ("int4", "bnb-8bit", "bnb-nf4"))]


@pytest.fixture(scope="module")
def cache_server() -> Iterator[RedisServer]:
    with RedisServer(args=CACHE_ARGS) as server:
        yield server


def _start(tmp: pytest.TempPathFactory, tiny: Path, redis_server: RedisServer, s3_server: S3Server,
           cache: RedisServer, mode: str) -> WorkerProcess:
    return start_worker(tiny, redis_server.url, s3_server.url, tmp.mktemp("worker"), RERANKQ_QUANTIZATION=mode,
                        RERANKQ_CACHE__REDIS_URL=cache.url, RERANKQ_BATCH__FLUSH_INTERVAL_MS="50")


@pytest.fixture(scope="module")
def full_worker(tmp_path_factory, tiny_model_dir, redis_server, s3_server, cache_server):  # type: ignore[no-untyped-def]
    worker = _start(tmp_path_factory, tiny_model_dir, redis_server, s3_server, cache_server, "none")
    yield worker
    stop_worker(worker)


def mixed_job(media: dict[str, str]) -> dict[str, Any]:
    """The same job every time (the bounds were measured on it): text and image documents, an image query.
    Only full precision's entries are in the cache before a mode runs it: each mode has an identity of its own."""
    words = ["red", "blue", "trail", "backpack", "bottle", "nylon", "leather", "city", "light", "heavy", "pocket",
             "strap", "zip", "water"]
    texts = [{"text": " ".join(words[(d * 5 + i * (d % 4 + 1)) % len(words)] for i in range(24))} for d in range(8)]
    images = [{"image": media["cat.png"]}, {"image": media["dog.jpg"]}, {"image": media["frame0.png"]}]
    return {"query": {"text": "a striped cat on a mat", "image": media["frame1.png"]},
            "documents": texts[:4] + images + texts[4:]}


@pytest.mark.parametrize("mode", MODES)
def test_a_quantized_worker_scores_within_bounds_and_says_so(mode: str, tmp_path_factory: pytest.TempPathFactory,
                                                             tiny_model_dir: Path, redis_server: RedisServer,
                                                             s3_server: S3Server, cache_server: RedisServer,
                                                             full_worker: WorkerProcess,
                                                             media: dict[str, str]) -> None:
    worker = _start(tmp_path_factory, tiny_model_dir, redis_server, s3_server, cache_server, mode)
    try:
        job = mixed_job(media)
        full = run(full_worker, job)  # full precision first: its scores are in the cache now
        first = run(worker, job)
        assert first["usage"]["cached_pairs"] == 0  # a quantized score never comes from a full-precision entry
        assert first["model"] == f"{full['model']} [{mode}]" and "[" not in full["model"]
        a = agreement([full["scores"]], [first["scores"]])
        rho, top, max_delta, mean_delta = TINY_BOUNDS[mode]
        assert a["spearman_min"] >= rho and a["top10_overlap"] >= top, a
        assert 0 < a["max_abs_delta"] <= max_delta and a["mean_abs_delta"] <= mean_delta, a
        again = run(worker, job)  # its own entries it does read, exactly
        assert again["usage"]["cached_pairs"] == len(job["documents"]) and again["scores"] == first["scores"]
        assert worker.metric("rerankq_pairs_scored_total", f'model="{first["model"]}"') >= len(job["documents"])
        with RerankClient(worker.settings) as client:
            entries = registry.live_workers(client.redis, worker.settings)
        assert [(w["model"], w["quantization"]) for w in entries] == [(str(tiny_model_dir), mode)]
        gateway = start_gateway(worker.env, tmp_path_factory.mktemp("gateway"))
        try:  # what /v1/models and the console's worker list (/v1/queue) show
            models = json.loads(urllib.request.urlopen(f"{gateway.url}/v1/models", timeout=10).read())["data"]
            assert [(m["id"], m["quantization"]) for m in models] == [(str(tiny_model_dir), [mode])]
            queue = json.loads(urllib.request.urlopen(f"{gateway.url}/v1/queue", timeout=10).read())
            assert [w["quantization"] for w in queue["workers"]] == [mode]
        finally:
            stop_process(gateway.proc)
    finally:
        stop_worker(worker)


def _cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "rerankq.cli", *args], capture_output=True, text=True,
                          timeout=180, env={**os.environ, "RERANKQ_REDIS_URL": "redis://127.0.0.1:1/0"})


FP8 = ("quantization (RERANKQ_QUANTIZATION)='fp8' needs a CUDA GPU with compute capability >= 9.0 (H100 or "
       "newer); device is 'cpu'\n")


def test_a_worker_refuses_a_mode_this_machine_cannot_run_in_one_line(tiny_model_dir: Path) -> None:
    out = _cli("worker", "--model", str(tiny_model_dir), "--device", "cpu", "--quantization", "fp8")
    assert (out.returncode, out.stderr) == (4, FP8)
    out = _cli("worker", "--model", str(tiny_model_dir), "--quantization", "int3")
    assert out.returncode == 2 and "argument --quantization: invalid choice: 'int3'" in out.stderr


def test_the_setting_refuses_an_unknown_mode_in_one_line() -> None:
    env = {**os.environ, "RERANKQ_QUANTIZATION": "int3"}
    out = subprocess.run([sys.executable, "-m", "rerankq.cli", "worker", "--model", "fake:hash"], env=env,
                         capture_output=True, text=True, timeout=120)
    assert out.returncode == 4 and out.stderr.startswith("invalid setting RERANKQ_QUANTIZATION: Input should be ")
    assert out.stderr.count("\n") == 1


def test_the_demo_refuses_a_mode_this_machine_cannot_run_before_starting_anything() -> None:
    out = _cli("demo", "--quantization", "fp8")
    assert (out.returncode, out.stderr) == (4, FP8)
    assert "redis-server at" not in out.stdout and "worker pid" not in out.stdout  # nothing was started
