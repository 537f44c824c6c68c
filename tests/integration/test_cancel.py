"""A cancel is answered truthfully: a job past its commit (``finishing``) or already ended is not cancelled, and
the SDK (``CancelTooLate``), the CLI (exit 1, one line) and the gateway (409 naming the state) say so; a job
cancelled while running never gets its result written. Real redis-server; the worker's transitions are driven
through ``JobStore`` (start, commit, finish), as a worker runs them."""

from __future__ import annotations

import json
import os
import urllib.error
import urllib.request
from pathlib import Path

import pytest

from rerankq.cli.cluster import stop_process
from rerankq.client import RerankClient
from rerankq.errors import CancelTooLate
from rerankq.jobs import JobState, Outcome
from rerankq.settings import Settings
from tests.integration.conftest import start_gateway
from tests.integration.test_cli_errors import rerankq

JOB = {"query": "q", "documents": ["a", "b"]}


@pytest.fixture()
def client(redis_url: str) -> RerankClient:
    return RerankClient(Settings(redis_url=redis_url, queue_prefix="cancel"))


def finishing(client: RerankClient, job_id: str) -> int:
    """Take the job as a worker does and commit its result; returns the attempt's fence."""
    client.jobs.create_many([{**JOB, "job_id": job_id}])
    [started] = client.jobs.start_many([(job_id, 2, False)], "w")
    assert client.jobs.commit_many([(job_id, started.fence)]) == ["finishing"]
    return started.fence


def test_a_finishing_job_cannot_be_cancelled_and_ends_succeeded(client: RerankClient) -> None:
    fence = finishing(client, "f")
    with pytest.raises(CancelTooLate) as too_late:
        client.cancel("f")
    assert too_late.value.state == "finishing" and "too late to cancel" in str(too_late.value)
    assert client.jobs.finish_many([Outcome("f", fence, JobState.SUCCEEDED, {"result": "{}"})]) == ["succeeded"]
    with pytest.raises(CancelTooLate) as ended:
        client.cancel("f")
    assert ended.value.state == "succeeded" and client.status("f")["state"] == "succeeded"


def test_a_job_cancelled_while_running_writes_no_result(client: RerankClient) -> None:
    client.jobs.create_many([{**JOB, "job_id": "r"}])
    [started] = client.jobs.start_many([("r", 2, False)], "w")
    assert client.cancel("r") == "running"
    assert client.jobs.commit_many([("r", started.fence)]) == ["cancelled"]  # so nothing goes to S3
    assert client.jobs.finish_many([Outcome("r", started.fence, JobState.SUCCEEDED, {"result": "{}"})]) \
        == ["cancelled"]
    record = client.jobs.record("r")
    assert record.state == JobState.CANCELLED and record.result is None
    assert client.cancel("r") == "cancelled"  # a second cancel: it was cancelled, and says so


def test_the_cli_exits_1_with_one_line(client: RerankClient, redis_url: str) -> None:
    finishing(client, "c")
    env = {"RERANKQ_REDIS_URL": redis_url, "RERANKQ_QUEUE_PREFIX": "cancel"}
    out = rerankq("cancel", "c", env=env)
    assert (out.returncode, out.stderr) == (1, "job c is finishing (its result is being written): too late to "
                                               "cancel\n")
    client.jobs.create_many([{**JOB, "job_id": "q"}])
    assert rerankq("cancel", "q", env=env).stdout == "q: cancelled\n"


def test_the_gateway_answers_409_naming_the_state(client: RerankClient, redis_url: str, tmp_path: Path) -> None:
    finishing(client, "g")
    gateway = start_gateway({**os.environ, "RERANKQ_REDIS_URL": redis_url, "RERANKQ_QUEUE_PREFIX": "cancel"},
                            tmp_path)
    try:
        with pytest.raises(urllib.error.HTTPError) as answer:
            urllib.request.urlopen(urllib.request.Request(f"{gateway.url}/v1/jobs/g", method="DELETE"), timeout=30)
        body = json.loads(answer.value.read())
        assert answer.value.code == 409 and body["state"] == "finishing" and body["job_id"] == "g", body
    finally:
        stop_process(gateway.proc)
