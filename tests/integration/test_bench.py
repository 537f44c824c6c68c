"""`rerankq bench` starts its own private cluster, reports end-to-end and scorer-alone pairs/s, latency, batch
fill and Redis commands per job, and draws the run."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from PIL import Image

REPORT_KEYS = {"e2e_pairs_per_s", "scorer_pairs_per_s", "jobs_per_s", "p50_latency_s", "p95_latency_s",
             "mean_batch_pairs", "mean_batch_jobs", "padding_ratio", "device", "model"}


def test_bench_json_and_plot(tmp_path: Path, tiny_model_dir: Path) -> None:
    plot = tmp_path / "bench.png"
    done = subprocess.run(
        [sys.executable, "-m", "rerankq.cli", "bench", "--model", str(tiny_model_dir), "--workload", "24x4:text",
         "--workload", "6x2:image", "--workload", "4x3:image-query", "--workload", "2x2:video-query",
         "--repeats", "2", "--lone", "3", "--json", "--plot", str(plot)],
        capture_output=True, text=True, timeout=280, check=False)
    assert done.returncode == 0, done.stderr[-3000:]
    assert "HTTP/1.1" not in done.stderr  # the private S3 server keeps its request log to itself
    report = json.loads(done.stdout.strip().splitlines()[-1])
    assert report.keys() >= REPORT_KEYS
    assert [w["workload"] for w in report["workloads"]] == ["24x4:text", "6x2:image", "4x3:image-query",
                                                           "2x2:video-query"]
    for w in report["workloads"]:
        assert w["e2e_pairs_per_s"] > 0 and w["scorer_pairs_per_s"] > 0 and w["p95_latency_s"] >= w["p50_latency_s"]
        assert w["forward_passes"] >= 1
        # the scorer-alone figure replays the worker's own passes, best of the runs, between (not during) them
        assert w["scorer_replayed"] and len(w["scorer_runs_pairs_per_s"]) == len(w["e2e_runs_pairs_per_s"]) == 2
        assert w["noise"] == (w["e2e_vs_scorer"] > 1)
        assert w["redis_commands_per_job"] > 0
    text = report["workloads"][0]
    assert text["pairs"] == 96 and text["forward_passes"] < 24  # pairs of many jobs share forward passes
    assert report["mean_batch_jobs"] > 1
    assert report["lone_p95_latency_s"] >= report["lone_p50_latency_s"] > 0
    with Image.open(plot) as image:
        assert image.format == "PNG" and image.size[0] > 500


def test_cache_bench_runs_the_workload_cold_then_warm() -> None:
    done = subprocess.run(
        [sys.executable, "-m", "bench.cache", "--model", "fake:hash", "--workload", "6x3:image",
         "--repeats", "1", "--json"], capture_output=True, text=True, timeout=120, check=False)
    assert done.returncode == 0, done.stderr[-3000:]
    (w,) = json.loads(done.stdout.strip().splitlines()[-1])["workloads"]
    assert w["warm_scores_identical"] and w["pairs"] == 18
    assert w["off"]["hit_ratio"] is None and w["off"]["cached_pairs"] == 0
    assert w["cold"]["hit_ratio"] == 0 and w["cold"]["cached_pairs"] == 0
    assert w["warm"]["hit_ratio"] == 1 and w["warm"]["cached_pairs"] == 18 and w["warm"]["tokens_scored"] == 0
