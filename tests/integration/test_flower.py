"""``rerankq flower``, as a user starts it from a clone: the deployment's broker and Celery app, loopback
only, task history in a local file; every job shows up as a task; requests need its login."""

from __future__ import annotations

import base64
import json
import os
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from rerankq.cli.cluster import RedisServer, free_port, stop_process, wait_for_port
from rerankq.client import RerankClient
from tests.integration.conftest import WorkerProcess

RERANKQ = str(Path(sys.executable).parent / "rerankq")
LOGIN = "ops:s3cret"


@dataclass
class Flower:
    url: str
    port: int
    proc: subprocess.Popen[bytes]
    log: Path
    db: Path


@pytest.fixture(scope="module")
def flower(redis_server: RedisServer, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Flower]:
    port = free_port()
    home = tmp_path_factory.mktemp("home")  # the default --db lives under $HOME, in a folder not there yet
    env = {**os.environ, "RERANKQ_REDIS_URL": redis_server.url, "FLOWER_BASIC_AUTH": LOGIN, "HOME": str(home)}
    log = home / "flower.log"
    with log.open("wb") as out:
        proc = subprocess.Popen([RERANKQ, "flower", "--port", str(port)], env=env, stdout=out,
                                stderr=subprocess.STDOUT)
    try:
        wait_for_port(port, 60, "flower", proc)
        yield Flower(f"http://127.0.0.1:{port}", port, proc, log, home / ".local" / "state" / "rerankq" / "flower.db")
    finally:
        stop_process(proc, grace=10.0)


def get(url: str, login: str | None = LOGIN) -> Any:
    request = urllib.request.Request(url)
    if login:
        request.add_header("Authorization", "Basic " + base64.b64encode(login.encode()).decode())
    with urllib.request.urlopen(request, timeout=10) as resp:
        return json.loads(resp.read())


def test_jobs_show_up_as_tasks(flower: Flower, queue_worker: WorkerProcess) -> None:
    with RerankClient(queue_worker.settings) as client:
        job_id = client.submit({"query": {"text": "flower"}, "documents": [{"text": "a"}, {"text": "b"}]})
        client.result(job_id, timeout=60)
    deadline = time.monotonic() + 30
    task: dict[str, Any] = {}
    while time.monotonic() < deadline:
        task = get(f"{flower.url}/api/tasks").get(job_id, {})
        if task.get("state") == "SUCCESS":
            break
        time.sleep(0.5)
    assert task.get("state") == "SUCCESS", task
    assert task["name"] == "rerankq.rerank" and task["runtime"] > 0
    assert task["worker"].startswith("rerankq-cpu-")


def test_flower_requires_its_login(flower: Flower) -> None:
    with pytest.raises(urllib.error.HTTPError) as refused:
        get(f"{flower.url}/api/tasks", login=None)
    refused.value.close()
    assert refused.value.code == 401


def flower_task(flower: Flower, task_id: str, states: set[str], timeout: float = 30) -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    task: dict[str, Any] = {}
    while time.monotonic() < deadline:
        task = get(f"{flower.url}/api/tasks").get(task_id, {})
        if task.get("state") in states:
            break
        time.sleep(0.5)
    return task


def test_outcomes_are_truthful(flower: Flower, queue_worker: WorkerProcess) -> None:
    """An expired job is REVOKED (not a green SUCCESS); a job with invalid input is a FAILURE whose exception
    is the validation error; the job id is the task id and the priority is its queue."""
    with RerankClient(queue_worker.settings) as client:
        late = client.submit({"query": {"text": "late"}, "documents": [{"text": "a"}], "priority": "low",
                              "expires_at": time.time() - 5})
        bad = client.celery.send_task("rerankq.rerank", args=[{"query": {"text": "q"}, "documents": []}],
                                      queue=f"{queue_worker.settings.queue_prefix}.high")
        revoked = flower_task(flower, late, {"REVOKED", "SUCCESS"})
        failed = flower_task(flower, bad.id, {"FAILURE", "SUCCESS"})
        assert client.status(bad.id)["state"] == "failed"  # the worker made the record under the task id
    assert revoked.get("state") == "REVOKED", revoked
    assert revoked["routing_key"] == f"{queue_worker.settings.queue_prefix}.low"
    assert failed.get("state") == "FAILURE", failed
    assert "documents: List should have at least 1 item" in failed["exception"]


def test_flower_starts_with_our_app_on_loopback_and_stops_cleanly(flower: Flower) -> None:
    """Runs last in this module: it stops the module's Flower."""
    started = flower.log.read_text()
    assert f"Visit me at http://127.0.0.1:{flower.port}" in started
    assert "'rerankq.rerank'" in started.split("Registered tasks:")[1]  # our app, not only Celery's built-ins
    flower.proc.send_signal(signal.SIGTERM)
    assert flower.proc.wait(30) == 0
    log = flower.log.read_text()
    assert "Traceback" not in log and " ERROR " not in log, log
    assert list(flower.db.parent.glob("flower.db*")), "task history saved at shutdown"


def test_flower_without_a_login_says_what_to_set(redis_server: RedisServer) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("FLOWER_")}
    out = subprocess.run([RERANKQ, "flower"], env={**env, "RERANKQ_REDIS_URL": redis_server.url},
                         capture_output=True, text=True, timeout=60)
    assert (out.returncode, out.stderr) == (4, "Flower needs a login: set FLOWER_BASIC_AUTH=user:password "
                                               "(Flower can cancel jobs and shut workers down)\n")
