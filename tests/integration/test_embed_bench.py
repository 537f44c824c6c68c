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
