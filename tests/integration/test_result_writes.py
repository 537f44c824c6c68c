"""Writing a result to S3: a transient failure (the endpoint down) puts the job back in its queue and it
succeeds once S3 is back; a permanent one (no such bucket) fails the job with the reason. Real parts: a
worker process on the fake model, moto's S3 server stopped and started again on its port."""

from __future__ import annotations

import json
from pathlib import Path

from rerankq.cli.cluster import RedisServer, S3Server
from rerankq.client import RerankClient
from rerankq.errors import JobFailed
from tests.integration.conftest import start_worker, stop_worker, wait_for


def test_a_result_write_that_meets_s3_down_is_retried_not_failed(redis_server: RedisServer,
                                                                  tmp_path: Path) -> None:
    s3 = S3Server().start()
    s3.client().create_bucket(Bucket="results")
    worker = start_worker("fake:hash", redis_server.url, s3.url, tmp_path, RERANKQ_LEASE_S="3")
    client = RerankClient(worker.settings)
    try:
        s3.stop()  # S3 goes away before the job is scored
        job_id = client.submit({"query": {"text": "q"}, "documents": [{"text": "a"}, {"text": "b"}],
                                "result_uri": "s3://results/out/"})
        record = lambda: client.jobs.record(job_id)  # noqa: E731
        wait_for(lambda: int(record().extra.get("retries", 0)) >= 1, 60, "the first failed write")
        assert "S3 connection failed" in record().extra["last_error"]
        assert record().state in ("queued", "running")  # back in its queue, never failed
        s3 = S3Server(port=s3.port).start()  # S3 is back, with its buckets
        result = client.result(job_id, timeout=60)
        status = client.status(job_id)
        stored = json.loads(s3.client().get_object(Bucket="results", Key=f"out/{job_id}.json")["Body"].read())
        ends = int(client.redis.hget(client.jobs.key(job_id), "ends") or 0)
    finally:
        stop_worker(worker)
        client.close()
        s3.stop()
    assert status["state"] == "succeeded" and stored == result and len(result["scores"]) == 2
    assert ends == 1  # one terminal write, however many attempts


def test_a_result_write_that_cannot_succeed_fails_the_job_with_the_reason(redis_server: RedisServer,
                                                                          s3_server: S3Server,
                                                                          tmp_path: Path) -> None:
    # A bucket that does not exist is refused at submit (and checked by the worker before scoring); to reach the
    # write, the bucket goes away after both have seen it: they check a bucket once, then trust it.
    s3 = s3_server.client()
    s3.create_bucket(Bucket="vanishing")
    worker = start_worker("fake:hash", redis_server.url, s3_server.url, tmp_path)
    client = RerankClient(worker.settings)
    request = {"query": {"text": "q"}, "documents": [{"text": "a"}], "result_uri": "s3://vanishing/out/"}
    try:
        first = client.submit(request)
        client.result(first, timeout=60)
        s3.delete_object(Bucket="vanishing", Key=f"out/{first}.json")
        s3.delete_bucket(Bucket="vanishing")
        job_id = client.submit(request)
        try:
            client.result(job_id, timeout=60)
            raise AssertionError("the job should have failed")
        except JobFailed as exc:
            error = exc.error
    finally:
        stop_worker(worker)
        client.close()
    assert error == f"could not write the result: s3://vanishing/out/{job_id}.json: no such bucket"
