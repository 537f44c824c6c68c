"""``rerankq batch …`` and the progress bars, as a user runs them: the real command in a subprocess against a
private ``redis-server``, moto's S3 server and a ``rerankq worker`` (the fake scorer).

A progress bar goes to stderr when stderr is a terminal (a pseudo-terminal here) and nothing extra is
printed when it is piped: stdout stays one id or one JSON line per job.
"""

from __future__ import annotations

import json
import os
import pty
import select
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from rerankq.cli.cluster import S3Server
from tests.chaos_kit import Cluster, Redis

pytestmark = pytest.mark.slow
BUCKET = "batch-cli"


@pytest.fixture()
def cluster(private_redis: Redis, s3_server: S3Server, s3: Any, tmp_path: Path) -> Iterator[Cluster]:
    s3.create_bucket(Bucket=BUCKET)
    c = Cluster(private_redis.url, s3_server.url, tmp_path, RERANKQ_BATCHES__PART_INTERVAL_S="0.5")
    c.start(1)
    yield c
    c.close()


def rerankq(c: Cluster, *argv: str, tty: bool = False, stdin: str | None = None) -> tuple[int, str, str]:
    """Run ``rerankq ARGV``; with ``tty``, its stderr is a pseudo-terminal. Returns (code, stdout, stderr)."""
    cmd = [sys.executable, "-m", "rerankq.cli", *argv]
    env = {**os.environ, **c.env}
    if not tty:
        done = subprocess.run(cmd, env=env, capture_output=True, text=True, input=stdin, timeout=120)
        return done.returncode, done.stdout, done.stderr
    master, slave = pty.openpty()
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=slave, stdin=subprocess.PIPE, text=True)
    os.close(slave)
    out, err = proc.communicate(stdin, timeout=120)[0], b""
    while select.select([master], [], [], 0.2)[0]:
        try:
            chunk = os.read(master, 65536)
        except OSError:
            break
        if not chunk:
            break
        err += chunk
    os.close(master)
    return proc.returncode, out, err.decode(errors="replace")


def test_batch_submit_wait_status_list_cancel(cluster: Cluster, s3: Any, tmp_path: Path) -> None:
    lines = [{"custom_id": f"x{i}", "query": "q", "documents": [f"d{i}", "e"]} for i in range(40)]
    local = tmp_path / "in.jsonl"
    local.write_text("".join(json.dumps(line) + "\n" for line in lines) + "not json\n")
    code, out, err = rerankq(cluster, "batch", "submit", str(local), "--output", f"s3://{BUCKET}/cli/",
                             "--batch-id", "cli-1", "--wait")
    assert code == 0, err
    first, summary = out.splitlines()
    assert first == "cli-1" and summary.startswith("cli-1: completed, 41/41 lines done (40 succeeded, 1 failed")
    assert err == ""  # piped: no progress bar
    code, out, _ = rerankq(cluster, "batch", "status", "cli-1", "--json")
    record = json.loads(out)
    assert code == 0 and record["state"] == "completed" and record["counts"]["succeeded"] == 40
    assert record["parts"]["errors"] >= 1
    code, out, _ = rerankq(cluster, "batch", "list")
    assert code == 0 and out.startswith("cli-1: completed")
    code, out, _ = rerankq(cluster, "batch", "cancel", "cli-1")
    assert (code, out.strip()) == (0, "cli-1: already completed")
    code, _, err = rerankq(cluster, "batch", "status", "nope")
    assert (code, err.strip()) == (1, "no such batch: nope")
    code, _, err = rerankq(cluster, "batch", "submit", str(local), "--output", "/tmp/out")
    assert code == 2 and "output" in err and "s3://" in err


def test_progress_bars_on_a_terminal_only(cluster: Cluster, tmp_path: Path) -> None:
    jobs = json.dumps([{"query": "q", "documents": [f"d{i}", "e"]} for i in range(30)])
    code, out, err = rerankq(cluster, "submit", "-", "--wait", stdin=jobs)
    assert code == 0 and len(out.splitlines()) == 30 and err == ""
    code, out, err = rerankq(cluster, "submit", "-", "--wait", tty=True, stdin=jobs)
    assert code == 0 and len(out.splitlines()) == 30
    assert "30/30" in err and "job" in err  # tqdm's bar: done/total, rate
    local = tmp_path / "bar.jsonl"
    local.write_text("".join(json.dumps({"query": "q", "documents": [f"d{i}"]}) + "\n" for i in range(20)))
    code, out, err = rerankq(cluster, "batch", "submit", str(local), "--output", f"s3://{BUCKET}/bar/", "--wait",
                             tty=True)
    assert code == 0 and "20/20" in err and "line" in err and "pairs_s" in err
