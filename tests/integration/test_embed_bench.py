"""``python -m bench.embedding`` runs end to end on the tiny checkpoint and reports consistent figures."""

from __future__ import annotations

import json
import subprocess
import sys

from tests.typecheck import ROOT


def test_embedding_bench_reports_both_ways_with_equal_vectors() -> None:
    out = subprocess.run([sys.executable, "-m", "bench.embedding", "--kinds", "text,mixed", "--inputs", "4",
                          "--max-batch-inputs", "4", "--repeat", "1", "--json"],
                         capture_output=True, text=True, timeout=600, cwd=ROOT)
    assert out.returncode == 0, out.stderr[-2000:]
    report = json.loads(out.stdout)
    assert report["dims"] == 64 and [r["kind"] for r in report["results"]] == ["text", "mixed"]
    for row in report["results"]:
        assert row["inputs"] == 4 and row["tokens"] > 4 * 20
        assert row["one_per_pass_inputs_per_s"] > 0 and row["batched_inputs_per_s"] > 0
        assert row["max_abs_delta"] <= 1e-5


def test_engine_mode_runs_jobs_through_the_round_engine_and_the_vector_cache() -> None:
    """``--engine --cache``: jobs of text and mixed inputs (file:// images and clips) without the cache, cold and
    warm on a private redis-server; the warm run is answered wholly by the cache, with the stored vectors."""
    out = subprocess.run([sys.executable, "-m", "bench.embedding", "--engine", "--cache", "--kinds", "text,mixed",
                          "--jobs", "2", "--per-job", "4", "--repeat", "1", "--json"],
                         capture_output=True, text=True, timeout=600, cwd=ROOT)
    assert out.returncode == 0, out.stderr[-2000:]
    report = json.loads(out.stdout)
    assert report["mode"] == "engine" and report["cache"] is True and report["dims"] == 64
    assert [r["kind"] for r in report["results"]] == ["text", "mixed"]
    for row in report["results"]:
        assert row["jobs"] == 2 and row["inputs"] == row["cached_inputs"] == 8 and row["tokens"] > 8 * 20
        for run in ("none", "cold", "warm"):
            assert row[f"{run}_inputs_per_s"] > 0
        assert row["warm_speedup"] > 0 and row["cold_speedup"] > 0
        assert row["max_abs_delta_cached_vs_stored"] == 0.0  # float32 stored and read back exactly
        assert row["max_abs_delta_cached_vs_uncached"] <= 1e-6


def test_engine_mode_prints_its_table_without_the_cache() -> None:
    out = subprocess.run([sys.executable, "-m", "bench.embedding", "--engine", "--kinds", "text", "--jobs", "1",
                          "--per-job", "2", "--repeat", "1"], capture_output=True, text=True, timeout=600, cwd=ROOT)
    assert out.returncode == 0, out.stderr[-2000:]
    lines = out.stdout.splitlines()
    assert lines[0].startswith("tiny-embedding on cpu") and "without the vector cache" in lines[0]
    assert lines[1].split() == ["kind", "jobs", "inputs", "tokens", "none", "/s"]
    kind, jobs, inputs, _tokens, rate = lines[2].split()
    assert (kind, jobs, inputs) == ("text", "1", "2") and float(rate) > 0


def test_queue_mode_runs_jobs_through_a_worker_and_the_sdk() -> None:
    """``--queue --cache``: the same runs through a private cluster's worker process, submitted with the SDK."""
    out = subprocess.run([sys.executable, "-m", "bench.embedding", "--queue", "--cache", "--kinds", "mixed",
                          "--jobs", "2", "--per-job", "2", "--repeat", "1", "--json"],
                         capture_output=True, text=True, timeout=600, cwd=ROOT)
    assert out.returncode == 0, out.stderr[-2000:]
    report = json.loads(out.stdout)
    assert report["mode"] == "queue" and report["dims"] == 64 and "tiny-embedding" in report["model"]
    (row,) = report["results"]
    assert row["kind"] == "mixed" and row["inputs"] == row["cached_inputs"] == 4 and row["tokens"] > 4 * 20
    assert row["none_inputs_per_s"] > 0 and row["warm_inputs_per_s"] > 0
    assert row["max_abs_delta_cached_vs_stored"] == 0.0 and row["max_abs_delta_cached_vs_uncached"] <= 1e-6
