"""The queue end to end through the SDK: a real redis-server, moto's S3 server, a worker subprocess."""

from __future__ import annotations

import threading
import time
import uuid
from typing import Any

import pytest

from rerankq.cli.cluster import free_port
from rerankq.client import RerankClient
from rerankq.errors import CancelTooLate, InvalidRequest, JobFailed, NoSuchJob
from tests.integration.conftest import MEDIA_BUCKET, RESULTS_BUCKET, WorkerProcess

TOL = 1e-5


@pytest.fixture()
def client(queue_worker: WorkerProcess) -> RerankClient:
    with RerankClient(queue_worker.settings) as c:
        yield c


def mixed_request(media: dict[str, str]) -> dict[str, Any]:
    return {
        "instruction": "Find the matching product.",
        "query": {"text": "a striped cat", "image": media["cat.png"]},
        "documents": [
            {"text": "a dog on a sofa"},
            {"image": media["dog.jpg"]},
            {"video": media["clip.mp4"]},
            {"text": "four frames", "video": [media[f"frame{i}.png"] for i in range(4)]},
            {"text": "two pictures", "image": [media["cat.png"], media["dog.jpg"]]},
            {"text": "striped cats sleeping in the sun"},
        ],
        "fps": 2.0,
    }


def test_text_image_video_job_matches_in_process_scores(client: RerankClient, media: dict[str, str],
                                                         reference: Any) -> None:
    request = mixed_request(media)
    job_id = client.submit(request)
    result = client.result(job_id, timeout=120)
    expected = reference(request)
    assert result["job_id"] == job_id
    assert result["errors"] == []
    assert result["scores"] == pytest.approx(expected, abs=TOL)
    ranked = sorted(range(len(expected)), key=lambda i: -expected[i])
    assert [r["index"] for r in result["results"]] == ranked
    assert all(0 <= r["relevance_score"] <= 1 for r in result["results"])
    assert result["usage"]["pairs"] == 6 and result["usage"]["tokens"] > 0
    status = client.status(job_id)
    assert status["state"] == "succeeded"
    assert status["progress"] == {"pairs_done": 6, "pairs_total": 6}
    assert status["created_at"] <= status["started_at"] <= status["finished_at"]
    assert status["worker"].startswith("rerankq-cpu-")


def test_top_n_cuts_the_ranking(client: RerankClient, reference: Any) -> None:
    request = {"query": {"text": "red apple"}, "top_n": 2,
               "documents": [{"text": t} for t in ("green pear", "red apple pie", "a red apple", "bananas")]}
    result = client.result(client.submit(request), timeout=60)
    expected = reference(request)
    top = sorted(range(4), key=lambda i: -expected[i])[:2]
    assert [r["index"] for r in result["results"]] == top
    assert len(result["scores"]) == 4


def test_missing_media_fails_only_its_document(client: RerankClient, media: dict[str, str], reference: Any) -> None:
    missing = f"s3://{MEDIA_BUCKET}/q/nope.png"
    request = {"query": {"text": "cat"},
               "documents": [{"text": "a cat"}, {"image": missing}, {"image": media["cat.png"]}]}
    job_id = client.submit(request)
    result = client.result(job_id, timeout=60)
    assert result["scores"][1] is None
    assert [e["index"] for e in result["errors"]] == [1]
    assert client.status(job_id)["progress"] == {"pairs_done": 3, "pairs_total": 3}  # the failed one is done too
    assert missing in result["errors"][0]["error"]
    good = reference({**request, "documents": [request["documents"][0], request["documents"][2]]})
    assert [result["scores"][0], result["scores"][2]] == pytest.approx(good, abs=TOL)
    assert sorted(r["index"] for r in result["results"]) == [0, 2]


def test_unreadable_query_or_all_documents_fail_the_job(client: RerankClient) -> None:
    missing = f"s3://{MEDIA_BUCKET}/q/nope.png"
    bad_query = client.submit({"query": {"image": missing}, "documents": [{"text": "x"}]})
    all_bad = client.submit({"query": {"text": "x"}, "documents": [{"image": missing}, {"video": missing}]})
    for job_id in (bad_query, all_bad):
        with pytest.raises(JobFailed) as err:
            client.result(job_id, timeout=60)
        assert err.value.state == "failed"
        assert "nope.png" in str(err.value)
    assert client.status(bad_query)["error"].startswith("query:")


def test_job_id_is_an_idempotency_key(client: RerankClient, queue_worker: WorkerProcess) -> None:
    job_id = f"idem-{uuid.uuid4().hex}"
    request = {"job_id": job_id, "query": {"text": "q"}, "documents": [{"text": "d"}]}
    before = queue_worker.metric("rerankq_jobs_total", 'state="succeeded"')
    assert client.submit_many([request, request]) == [job_id, job_id]
    first = client.result(job_id, timeout=60)
    created = client.status(job_id)["created_at"]
    assert client.submit(request) == job_id
    time.sleep(0.5)  # a duplicate message would be scored within the flush interval
    assert client.status(job_id)["created_at"] == created
    assert client.result(job_id) == first
    assert queue_worker.metric("rerankq_jobs_total", 'state="succeeded"') == before + 1


def test_cancel_skips_the_job(client: RerankClient) -> None:
    blocker = client.submit({"query": {"text": "q"}, "documents": [{"text": f"doc {i} " * 20} for i in range(400)]})
    job_id = client.submit({"query": {"text": "q"}, "documents": [{"text": "d"}]})
    assert client.cancel(job_id) in ("queued", "running")
    with pytest.raises(JobFailed) as err:
        client.result(job_id, timeout=60)
    assert err.value.state == "cancelled"
    client.result(blocker, timeout=120)
    assert client.status(job_id)["state"] == "cancelled"  # the worker did not overwrite it
    with pytest.raises(CancelTooLate, match="already succeeded"):  # a finished job keeps its state
        client.cancel(blocker)
    assert client.status(blocker)["state"] == "succeeded"


def test_unknown_ids_are_no_such_job(client: RerankClient) -> None:
    for call in (client.status, client.result, client.cancel):
        with pytest.raises(NoSuchJob, match="no such job: nope"):
            call("nope")


@pytest.mark.parametrize(("request_", "field"), [
    ({"query": {"text": "q"}, "documents": [{"text": "d"}], "colour": "red"}, "colour"),
    ({"query": {"text": "q"}, "documents": []}, "documents"),
    ({"query": {"text": "q"}, "documents": [{"text": "d", "audio": "x"}]}, "documents[0].audio"),
    ({"query": {}, "documents": [{"text": "d"}]}, "query"),
    ({"query": {"text": "q"}, "documents": [{"text": "d"}] * 1001}, "documents"),
    ({"query": {"text": "q"}, "documents": [{"image": "ftp://x/y.png"}]}, "documents[0].image"),
])
def test_bad_requests_are_rejected_before_enqueue(client: RerankClient, request_: dict[str, Any],
                                                  field: str) -> None:
    queues = client.settings.queue_prefix
    before = client.redis.keys(f"{queues}:job:*")
    with pytest.raises(InvalidRequest) as err:
        client.submit_many([{"query": {"text": "fine"}, "documents": [{"text": "fine"}]}, request_])
    assert err.value.field == f"[1].{field}"  # the second job of the list
    assert client.redis.keys(f"{queues}:job:*") == before  # nothing enqueued, not even the valid one


def test_fifty_small_jobs_share_forward_passes(client: RerankClient, queue_worker: WorkerProcess) -> None:
    passes_before = queue_worker.metric("rerankq_batch_pairs_count")
    ids = client.submit_many([{"query": {"text": f"query {i}"}, "documents": [{"text": "a"}, {"text": "b c"}]}
                              for i in range(50)])
    done = dict(client.as_completed(ids, timeout=120))
    assert set(done) == set(ids)
    assert all(isinstance(r, dict) and len(r["scores"]) == 2 for r in done.values())
    passes = queue_worker.metric("rerankq_batch_pairs_count") - passes_before
    # Workers fetch only while they form a round (bounded reservations), so how many jobs a round catches
    # depends on the flush interval and the machine's speed; on average they must still share passes.
    assert 1 <= passes <= 25, f"50 jobs took {passes} forward passes"
    assert queue_worker.metric("rerankq_batch_jobs_sum") > queue_worker.metric("rerankq_batch_jobs_count")


def test_results_go_to_s3_when_asked_or_large(client: RerankClient, s3: Any) -> None:
    asked = client.submit({"query": {"text": "q"}, "documents": [{"text": "d"}],
                           "result_uri": f"s3://{RESULTS_BUCKET}/mine/"})
    large = client.submit({"query": {"text": "q"}, "documents": [{"text": f"d{i}"} for i in range(120)]})
    assert client.result(asked, timeout=60)["job_id"] == asked
    assert len(client.result(large, timeout=60)["scores"]) == 120
    assert client.jobs.record(asked).result_uri == f"s3://{RESULTS_BUCKET}/mine/{asked}.json"
    assert client.jobs.record(large).result_uri == f"s3://{RESULTS_BUCKET}/large/{large}.json"
    s3.head_object(Bucket=RESULTS_BUCKET, Key=f"mine/{asked}.json")


def test_metrics_cover_spec(queue_worker: WorkerProcess, client: RerankClient) -> None:
    client.result(client.submit({"query": {"text": "q"}, "documents": [{"text": "d"}]}), timeout=60)
    text = queue_worker.metrics()
    for name in ("rerankq_pairs_scored_total", "rerankq_jobs_total", "rerankq_batch_pairs_bucket",
                 "rerankq_batch_jobs_bucket", "rerankq_batch_padding_ratio_bucket", "rerankq_queue_wait_seconds",
                 "rerankq_scoring_seconds", "rerankq_media_fetch_seconds", "rerankq_queue_length",
                 "rerankq_job_seconds_count"):
        assert name in text
    prefix = queue_worker.settings.queue_prefix
    assert f'rerankq_queue_length{{queue="{prefix}.high"}}' in text


def test_worker_stays_responsive_and_emits_task_events_during_a_long_job(client: RerankClient) -> None:
    """Scoring runs off the Celery consumer's thread: the worker answers pings mid-job, and Flower's
    task events (sent, received, started, succeeded) and worker heartbeats flow."""
    app = client.celery
    events: list[dict[str, Any]] = []
    receiver_box: list[Any] = []

    def listen() -> None:
        with app.connection_for_read() as conn:
            receiver = app.events.Receiver(conn, handlers={"*": events.append})
            receiver_box.append(receiver)
            receiver.capture(limit=None, timeout=None, wakeup=True)

    listener = threading.Thread(target=listen, daemon=True)
    listener.start()
    deadline = time.monotonic() + 10
    while not receiver_box and time.monotonic() < deadline:
        time.sleep(0.05)
    time.sleep(1.0)  # the receiver's queue is bound before the job is sent
    job_id = client.submit({"query": {"text": "long"},
                            "documents": [{"text": f"document number {i} " * 60} for i in range(1000)]})
    deadline = time.monotonic() + 60
    while client.status(job_id)["state"] != "running" and time.monotonic() < deadline:
        time.sleep(0.05)
    worker = client.status(job_id)["worker"]
    replies = app.control.ping(destination=[worker], timeout=2)
    still_running = client.status(job_id)["state"] == "running"
    client.result(job_id, timeout=120)
    time.sleep(2.5)  # one more heartbeat interval
    receiver_box[0].should_stop = True
    assert still_running, "the job finished before the ping: make it longer"
    assert replies and worker in replies[0]
    kinds = {e["type"] for e in events if e.get("uuid") == job_id}
    assert {"task-sent", "task-received", "task-started", "task-succeeded"} <= kinds
    assert any(e["type"] == "worker-heartbeat" and e.get("hostname") == worker for e in events)


def test_result_uri_bucket_is_checked_by_the_worker_before_scoring(queue_worker: WorkerProcess) -> None:
    # A producer that cannot reach S3 cannot check the bucket at submit time; the worker checks it first.
    blind = queue_worker.settings.model_copy(update={"s3_endpoint_url": f"http://127.0.0.1:{free_port()}"})
    scored = queue_worker.metric("rerankq_pairs_scored_total")
    with RerankClient(blind) as client:
        job_id = client.submit({"query": "q", "documents": ["a", "b"], "result_uri": "s3://no-such-bucket/x/"})
        with pytest.raises(JobFailed, match=r"failed: result_uri: bucket 'no-such-bucket' does not exist$"):
            client.result(job_id, timeout=60)
        assert client.status(job_id)["progress"]["pairs_done"] == 0
    assert queue_worker.metric("rerankq_pairs_scored_total") == scored  # nothing was scored


def test_result_waits_by_default_and_timeout_zero_does_not(client: RerankClient) -> None:
    job_id = client.submit({"query": "q", "documents": ["a", "b"]})
    assert client.result(job_id)["job_id"] == job_id  # like Celery's AsyncResult.get(): waits until it ends
    idle = client.settings.model_copy(update={"queue_prefix": f"idle{uuid.uuid4().hex[:6]}"})  # no worker there
    with RerankClient(idle) as nobody:
        queued = nobody.submit({"query": "q", "documents": ["a"]})
        with pytest.raises(TimeoutError, match=f"^job {queued} is still queued$"):
            nobody.result(queued, timeout=0)


def test_statuses_of_many_jobs_in_one_call(client: RerankClient) -> None:
    ids = client.submit_many([{"query": "q", "documents": ["a"]} for _ in range(3)])
    dict(client.as_completed(ids, timeout=60))
    found = client.statuses([ids[0], "ghost", ids[2]])
    assert [s and (s["job_id"], s["state"]) for s in found] == [(ids[0], "succeeded"), None, (ids[2], "succeeded")]
