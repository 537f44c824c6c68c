"""The producer CLI against a real worker: submit (file, stdin, lists), --wait, status, result, cancel."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from tests.integration.conftest import MEDIA_BUCKET, RESULTS_BUCKET, WorkerProcess

RERANKQ = str(Path(sys.executable).parent / "rerankq")


def cli(worker: WorkerProcess, *args: str, stdin: str | None = None, **env: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([RERANKQ, *args], env={**worker.env, **env}, input=stdin, capture_output=True, text=True,
                          timeout=120)


def lines(out: subprocess.CompletedProcess[str]) -> list[dict[str, Any]]:
    return [json.loads(line) for line in out.stdout.splitlines()]


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
    late = cli(queue_worker, "cancel", "cli-2")  # too late: said, with exit 1
    assert late.returncode == 1 and "already succeeded" in late.stderr


def test_errors_are_one_line_with_an_exit_code(queue_worker: WorkerProcess) -> None:
    for args in (("status", "ghost"), ("result", "ghost"), ("cancel", "ghost")):
        out = cli(queue_worker, *args)
        assert (out.returncode, out.stderr.strip()) == (1, "no such job: ghost")
    out = cli(queue_worker, "submit", "-", stdin=json.dumps({"query": {"text": "q"}, "documents": [],
                                                             "oops": 1}))
    assert out.returncode == 2
    assert out.stderr.startswith("invalid request: ")


def test_submit_list_wait_prints_every_job_failures_included(queue_worker: WorkerProcess,
                                                             media: dict[str, str]) -> None:
    jobs = [{"query": "cat", "documents": ["a cat", "a dog"], "job_id": "many-ok"},
            {"query": "cat", "documents": [{"image": f"s3://{MEDIA_BUCKET}/q/missing.png"}], "job_id": "many-bad"},
            {"query": {"text": "cat"}, "documents": [{"image": media["cat.png"]}], "job_id": "many-ok2"}]
    out = cli(queue_worker, "submit", "-", "--wait", "--timeout", "60", stdin=json.dumps(jobs))
    assert (out.returncode, out.stderr) == (1, "1 of 3 jobs did not succeed\n")
    by_id = {line["job_id"]: line for line in lines(out)}
    assert set(by_id) == {"many-ok", "many-bad", "many-ok2"}
    assert len(by_id["many-ok"]["scores"]) == 2 and len(by_id["many-ok2"]["scores"]) == 1
    assert by_id["many-bad"]["state"] == "failed"
    assert by_id["many-bad"]["error"].startswith("every document failed: ")


def test_submit_list_wait_timeout_bounds_the_whole_wait(queue_worker: WorkerProcess) -> None:
    jobs = [{"query": "q", "documents": ["d"], "job_id": f"never-{i}"} for i in range(2)]
    # No worker consumes this prefix's queues: the jobs stay queued.
    out = cli(queue_worker, "submit", "-", "--wait", "--timeout", "1", stdin=json.dumps(jobs),
              RERANKQ_QUEUE_PREFIX="nobody")
    assert (out.returncode, out.stderr) == (3, "timed out after 1 s (--timeout): 2 of 2 jobs unfinished\n")
    assert [(line["job_id"], line["state"]) for line in lines(out)] == [("never-0", "queued"), ("never-1", "queued")]


def test_list_submit_names_the_bad_item(queue_worker: WorkerProcess) -> None:
    jobs = [{"query": "q", "documents": ["d"]}, {"query": "q", "documents": ["d"], "priority": "urgent"}]
    out = cli(queue_worker, "submit", "-", stdin=json.dumps(jobs))
    assert (out.returncode, out.stderr) == (2, "invalid request: [1].priority: Input should be 'high', 'normal' or "
                                               "'low'\n")


def test_status_of_several_jobs(queue_worker: WorkerProcess) -> None:
    jobs = [{"query": "q", "documents": ["d"], "job_id": f"several-{i}"} for i in range(2)]
    assert cli(queue_worker, "submit", "-", "--wait", stdin=json.dumps(jobs)).returncode == 0
    out = cli(queue_worker, "status", "several-0", "ghost", "several-1")
    assert (out.returncode, out.stderr) == (1, "no such job: ghost\n")
    assert [(s["job_id"], s["state"]) for s in lines(out)] == [("several-0", "succeeded"), ("several-1", "succeeded")]


def test_result_from_s3_prints_nothing_on_stderr(queue_worker: WorkerProcess, media: dict[str, str],
                                                 tmp_path: Path) -> None:
    # ``media`` creates the results bucket
    job = {"query": "q", "documents": ["d"], "job_id": "in-s3", "result_uri": f"s3://{RESULTS_BUCKET}/cli/"}
    (tmp_path / "job.json").write_text(json.dumps(job))
    assert cli(queue_worker, "submit", str(tmp_path / "job.json"), "--wait").returncode == 0
    out = cli(queue_worker, "result", "in-s3")
    assert (out.returncode, out.stderr) == (0, "")
    assert json.loads(out.stdout)["job_id"] == "in-s3"


def test_result_uri_bucket_that_does_not_exist_is_refused_at_submit(queue_worker: WorkerProcess,
                                                                     tmp_path: Path) -> None:
    job = {"query": "q", "documents": ["d"], "result_uri": "s3://no-such-bucket/rerank/"}
    (tmp_path / "job.json").write_text(json.dumps(job))
    out = cli(queue_worker, "submit", str(tmp_path / "job.json"))
    assert (out.returncode, out.stderr) == (2, "invalid request: result_uri: bucket 'no-such-bucket' does not exist "
                                               "(create it, or leave result_uri out)\n")
