"""``rerankq demo`` end to end, as a user runs it: real redis-server, S3 endpoint, worker process, tiny model.

Every process the demo starts inherits a marker in its environment; after the demo exits, no process on the
machine may still carry it (whatever session or process group it moved to). redis-server rewrites its own
environment block for its process title, so it is found by that title (``.../redis-server 127.0.0.1:PORT``).
"""

from __future__ import annotations

import os
import re
import shutil
import signal
import subprocess
import sys
import time
import uuid
from pathlib import Path

import pytest

pytestmark = [pytest.mark.slow,
              pytest.mark.skipif(shutil.which("redis-server") is None, reason="redis-server is not installed"),
              pytest.mark.skipif(not Path("/proc/self/environ").exists(), reason="needs /proc (Linux)")]

DEMO = [sys.executable, "-m", "rerankq.cli", "demo"]


def _live(proc: Path) -> bool:
    return (proc / "stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"


def demo_processes(tag: str, redis_port: int | None = None) -> list[str]:
    """Command lines of live processes that the demo started: its environment marker, or its redis-server."""
    marker = f"RERANKQ_DEMO_TEST_TAG={tag}".encode()
    title = f"127.0.0.1:{redis_port}".encode() if redis_port else None
    found = []
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        try:
            cmdline = (proc / "cmdline").read_bytes().replace(b"\0", b" ")
            ours = marker in (proc / "environ").read_bytes().split(b"\0")
            ours = ours or (title is not None and b"redis-server" in cmdline and title in cmdline)
            if ours and _live(proc):
                found.append(cmdline.decode(errors="replace"))
        except OSError:  # gone meanwhile, or not ours to read
            continue
    return found


def no_process_left(tag: str, redis_port: int | None, within: float = 5.0) -> list[str]:
    deadline = time.monotonic() + within
    while (left := demo_processes(tag, redis_port)) and time.monotonic() < deadline:
        time.sleep(0.1)
    return left


def redis_port(out: str) -> int:
    match = re.search(r"redis-server at redis://127\.0\.0\.1:(\d+)/0", out)
    assert match, out
    return int(match.group(1))


def start_demo(tag: str) -> tuple[subprocess.Popen[str], list[str]]:
    """Start the demo and read its output until the worker is loading."""
    proc = subprocess.Popen(DEMO, env=demo_env(tag), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            start_new_session=True)
    lines = []
    assert proc.stdout is not None
    for line in proc.stdout:
        lines.append(line)
        if line.startswith("worker pid"):
            break
    return proc, lines


def finish(proc: subprocess.Popen[str]) -> str:
    try:
        out, _ = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
    return out


def demo_env(tag: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("RERANKQ_")}
    return {**env, "RERANKQ_DEMO_TEST_TAG": tag, "PYTHONUNBUFFERED": "1"}


def test_demo_prints_ranked_results_for_every_job_and_leaves_nothing_behind() -> None:
    tag = uuid.uuid4().hex
    run = subprocess.run(DEMO, env=demo_env(tag), capture_output=True, text=True, timeout=280,
                         start_new_session=True)
    out = run.stdout
    assert run.returncode == 0, out + run.stderr
    jobs = re.split(r"\njob \d+ ", out)[1:]
    assert len(jobs) == 6
    for block in jobs:
        assert "-> succeeded" in block
        scores = [float(m) for m in re.findall(r"^\s+\d+\s+\d+\s+([01]\.\d{4})\s", block, re.M)]
        assert scores and scores == sorted(scores, reverse=True), block
    assert "error  s3://rerankq-demo/images/does-not-exist.png" in out  # a per-document error, job still fine
    assert "(top 3 of 5 documents)" in out
    assert re.search(r"progress: 24/24 pairs, 6/6 jobs finished", out)  # the failed document counts as done
    assert re.search(r"throughput: 24 pairs, 6 jobs in [\d.]+ s = [\d.]+ pairs/s", out)
    assert "RANDOM weights" in out and "rerankq demo --model Qwen/Qwen3-VL-Reranker-2B --device cuda:0" in out
    assert no_process_left(tag, redis_port(out)) == []


def test_the_demo_runs_a_quantized_worker_and_says_so() -> None:
    tag = uuid.uuid4().hex
    run = subprocess.run([*DEMO, "--quantization", "int8"], env=demo_env(tag), capture_output=True, text=True,
                         timeout=280, start_new_session=True)
    assert run.returncode == 0, run.stdout + run.stderr
    assert re.search(r"progress: 24/24 pairs, 6/6 jobs finished", run.stdout)
    assert re.search(r"\nscored by: \S+ \[int8\]\n", run.stdout), run.stdout
    assert no_process_left(tag, redis_port(run.stdout)) == []


def test_ctrl_c_while_the_worker_loads_stops_everything() -> None:
    tag = uuid.uuid4().hex
    proc, lines = start_demo(tag)
    port = redis_port("".join(lines))
    running = demo_processes(tag, port)
    assert len(running) >= 3, f"demo, redis-server and worker should be running: {running}"
    proc.send_signal(signal.SIGINT)
    out = "".join(lines) + finish(proc)
    assert proc.returncode == 130, out
    assert "interrupted: stopping the worker, Redis and the S3 endpoint" in out
    assert no_process_left(tag, port) == []


def test_sigterm_stops_everything_too() -> None:
    tag = uuid.uuid4().hex
    proc, lines = start_demo(tag)
    port = redis_port("".join(lines))
    proc.terminate()
    out = "".join(lines) + finish(proc)
    assert proc.returncode == 130, out
    assert no_process_left(tag, port) == []


def test_without_redis_server_it_says_how_to_install_it(tmp_path: Path) -> None:
    env = {**demo_env(uuid.uuid4().hex), "PATH": str(tmp_path)}  # no redis-server on this PATH
    run = subprocess.run(DEMO, env=env, capture_output=True, text=True, timeout=60)
    assert run.returncode == 4  # cannot run (rerankq.cli's exit codes)
    assert "redis-server is not on PATH: install it" in run.stderr
