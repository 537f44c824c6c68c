"""Durable jobs: a worker killed in the middle of a job (SIGKILL, no clean-up) loses nothing — another
worker redelivers the unacknowledged job after the visibility timeout and finishes it."""

from __future__ import annotations

import signal
import time
from pathlib import Path
from typing import Any

import pytest

from rerankq.cli.cluster import RedisServer, S3Server
from rerankq.client import RerankClient
from tests.integration.conftest import MEDIA_BUCKET, start_worker, stop_worker, wait_for


@pytest.fixture()
def big_image(s3: Any) -> str:
    from rerankq.cli.samples import image_bytes, noise_image

    s3.put_object(Bucket=MEDIA_BUCKET, Key="durability/big.png", Body=image_bytes(noise_image(1400, 1400, seed=9)))
    return f"s3://{MEDIA_BUCKET}/durability/big.png"


def test_a_killed_workers_job_is_redelivered_and_finished(tiny_model_dir: Path, redis_server: RedisServer,
                                                          s3_server: S3Server, media: dict[str, str],
                                                          big_image: str, tmp_path: Path) -> None:
    env = {"RERANKQ_LEASE_S": "2", "RERANKQ_BATCH__MAX_TOKENS": "2048"}
    first = start_worker(tiny_model_dir, redis_server.url, s3_server.url, tmp_path, **env)
    client = RerankClient(first.settings.model_copy(update={"lease_s": 2}))
    # 150 image pairs at ~1800 visual tokens each, one per pass: several seconds of work on the tiny model, so
    # that the kill lands mid-job however fast this machine is today.
    request = {"query": {"text": "a noisy square"}, "documents": [{"image": big_image}] * 150, "job_id": "durable-1"}
    try:
        job_id = client.submit(request)
        # Running, not "some pairs done": progress is written at most once a second and not in a job's first
        # second, and on a quick machine the whole job may take about that long.
        wait_for(lambda: client.status(job_id)["state"] == "running", 60, "the first worker to start the job")
        killed = client.status(job_id)["worker"]
        first.proc.send_signal(signal.SIGKILL)  # no clean-up, no ack, no record update
        first.proc.wait(10)
        assert client.status(job_id)["state"] == "running"
        time.sleep(2.5)  # past the visibility timeout: the message may now be redelivered
        second = start_worker(tiny_model_dir, redis_server.url, s3_server.url, tmp_path,
                              RERANKQ_QUEUE_PREFIX=first.env["RERANKQ_QUEUE_PREFIX"], **env)
        try:
            result = client.result(job_id, timeout=120)
            status = client.status(job_id)
        finally:
            stop_worker(second)
    finally:
        stop_worker(first)
        client.close()
    assert status["state"] == "succeeded"
    assert killed and status["worker"] and status["worker"] != killed  # finished by the second worker
    assert len(result["scores"]) == 150 and None not in result["scores"] and not result["errors"]
    assert status["progress"]["pairs_done"] == status["progress"]["pairs_total"] == 150
