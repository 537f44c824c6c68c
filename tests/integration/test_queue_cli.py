"""The producer CLI against a real worker: submit (file, stdin, lists), --wait, status, result, cancel."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from tests.integration.conftest import WorkerProcess


def cli(worker: WorkerProcess, *args: str, stdin: str | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "shell.cli", *args], env=worker.env, input=stdin,
                          capture_output=True, text=True, timeout=120)


def test_submit_wait_prints_the_result(queue_worker: WorkerProcess, media: dict[str, str], reference: Any,
                                       tmp_path: Path) -> None:
    request = {"query": {"text": "cat"}, "documents": [{"image": media["cat.png"]}, {"video": media["clip.mp4"]},
                                                       {"text": "a cat"}], "top_n": 2}
    path = tmp_path / "job.json"
    path.write_text(json.dumps(request))
    out = cli(queue_worker, "submit", str(path), "--wait", "--timeout", "60")
    assert out.returncode == 0, out.stderr
    result = json.loads(out.stdout)
    assert result["scores"] == pytest.approx(reference(request), abs=1e-5)
    assert len(result["results"]) == 2


def test_submit_from_stdin_then_status_and_result(queue_worker: WorkerProcess) -> None:
    jobs = [{"query": {"text": "q"}, "documents": [{"text": "d"}], "job_id": f"cli-{i}"} for i in range(3)]
    out = cli(queue_worker, "submit", "-", stdin=json.dumps(jobs))
    assert out.stdout.split() == ["cli-0", "cli-1", "cli-2"]
    result = json.loads(cli(queue_worker, "result", "cli-2", "--wait", "--timeout", "60").stdout)
    assert result["job_id"] == "cli-2"
    status = json.loads(cli(queue_worker, "status", "cli-2").stdout)
    assert status["state"] == "succeeded" and status["progress"]["pairs_done"] == 1
    assert "already succeeded" in cli(queue_worker, "cancel", "cli-2").stdout


def test_errors_are_one_line_with_an_exit_code(queue_worker: WorkerProcess) -> None:
    for args in (("status", "ghost"), ("result", "ghost"), ("cancel", "ghost")):
        out = cli(queue_worker, *args)
        assert (out.returncode, out.stderr.strip()) == (1, "no such job: ghost")
    out = cli(queue_worker, "submit", "-", stdin=json.dumps({"query": {"text": "q"}, "documents": [],
                                                             "oops": 1}))
    assert out.returncode == 2
    assert out.stderr.startswith("invalid request: ")
