"""Flower, with the deployment's own config, shows every job as a task: state, runtime, worker; and it
refuses requests without its login."""

from __future__ import annotations

import base64
import json
import os
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from producer import RerankClient
from shell.cluster import RedisServer, free_port, stop_process, wait_for_port
from tests.integration.conftest import WorkerProcess

CONFIG = Path(__file__).resolve().parents[2] / "infra" / "flower" / "flowerconfig.py"
LOGIN = "ops:s3cret"


@pytest.fixture(scope="module")
def flower(redis_server: RedisServer, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    port = free_port()
    env = {**os.environ, "CELERY_BROKER_URL": redis_server.url, "FLOWER_BASIC_AUTH": LOGIN,
           "FLOWER_PORT": str(port), "FLOWER_DB": str(tmp_path_factory.mktemp("flower") / "flower.db")}
    proc = subprocess.Popen([sys.executable, "-m", "celery", "flower", f"--conf={CONFIG}"], env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        wait_for_port(port, 60, "flower", proc)
        yield f"http://127.0.0.1:{port}"
    finally:
        stop_process(proc, grace=10.0)


def get(url: str, login: str | None = LOGIN) -> Any:
    request = urllib.request.Request(url)
    if login:
        request.add_header("Authorization", "Basic " + base64.b64encode(login.encode()).decode())
    with urllib.request.urlopen(request, timeout=10) as resp:
        return json.loads(resp.read())


def test_jobs_show_up_as_tasks(flower: str, queue_worker: WorkerProcess) -> None:
    with RerankClient(queue_worker.settings) as client:
        job_id = client.submit({"query": {"text": "flower"}, "documents": [{"text": "a"}, {"text": "b"}]})
        client.result(job_id, timeout=60)
    deadline = time.monotonic() + 30
    task: dict[str, Any] = {}
    while time.monotonic() < deadline:
        task = get(f"{flower}/api/tasks").get(job_id, {})
        if task.get("state") == "SUCCESS":
            break
        time.sleep(0.5)
    assert task.get("state") == "SUCCESS", task
    assert task["name"] == "rerankq.rerank" and task["runtime"] > 0
    assert task["worker"].startswith("rerankq-cpu-")


def test_flower_requires_its_login(flower: str) -> None:
    with pytest.raises(urllib.error.HTTPError) as refused:
        get(f"{flower}/api/tasks", login=None)
    refused.value.close()
    assert refused.value.code == 401
