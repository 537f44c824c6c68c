"""A real worker process on the fake model (``fake:hash``): the engine, the queue and the dead-letter list
run without any model weights, and everything the fake produces says what it is."""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from rerankq import keys
from rerankq.cli.cluster import RedisServer, S3Server
from rerankq.client import RerankClient
from rerankq.media.resolver import MediaResolver
from rerankq.media.sides import Side, VisionBudget
from rerankq.models.batching import score_all
from rerankq.models.contract import instruction_for
from rerankq.models.fake import load_fake
from rerankq.models.options import LoadOptions
from rerankq.settings import Settings
from tests.integration.conftest import WorkerProcess, start_worker, stop_worker


@pytest.fixture(scope="module")
def fake_worker(redis_server: RedisServer, s3_server: S3Server,
                tmp_path_factory: pytest.TempPathFactory) -> Iterator[WorkerProcess]:
    worker = start_worker("fake:hash", redis_server.url, s3_server.url,
                          tmp_path_factory.mktemp("fake-worker"))
    yield worker
    stop_worker(worker)


def expected_scores(request: dict, settings: Settings) -> list[float]:
    """The same job scored in this process by the same fake: what any worker must return."""
    model = load_fake("fake:hash", LoadOptions())
    sides = [Side.from_dict(request["query"])] + [Side.from_dict(d) for d in request["documents"]]
    with MediaResolver(settings, model.preprocessor) as resolver:
        resolved = resolver.resolve_sides(sides, VisionBudget())
    pairs = [model.prepare(instruction_for(model, settings.instruction), resolved[0], d) for d in resolved[1:]]  # type: ignore[arg-type]
    return score_all(model.forward, pairs, [p.length for p in pairs])


def test_a_worker_runs_jobs_on_the_fake_and_says_so(fake_worker: WorkerProcess, media: dict[str, str]) -> None:
    requests = [{"query": {"text": f"query {i}"},
                 "documents": [{"text": "a red backpack"}, {"image": media["cat.png"]}, {"text": f"doc {i}"}]}
                for i in range(12)]
    with RerankClient(fake_worker.settings) as client:
        ids = client.submit_many(requests)
        results = dict(client.as_completed(ids, timeout=60))
    for job_id, request in zip(ids, requests, strict=True):
        result = results[job_id]
        assert not isinstance(result, Exception)
        assert result["model"] == "fake:hash"
        assert result["scores"] == pytest.approx(expected_scores(request, fake_worker.settings), abs=0)
    assert fake_worker.metric("rerankq_pairs_scored_total", 'model="fake:hash"') >= 36
    assert "fake:hash" in fake_worker.tail()  # the log says which model scored


def test_malformed_queue_entries_go_to_the_dead_letter_list(fake_worker: WorkerProcess) -> None:
    settings = fake_worker.settings
    with RerankClient(settings) as client:
        queue = keys.queue_name(settings, "normal")
        client.redis.lpush(queue, b"{not json")
        client.redis.lpush(queue, json.dumps({"body": "x"}))
        job_id = client.submit({"query": {"text": "still"}, "documents": [{"text": "served"}]})
        assert client.result(job_id, timeout=30)["model"] == "fake:hash"  # the worker survived both
    env = {**fake_worker.env}
    listed = subprocess.run([sys.executable, "-m", "rerankq.cli", "dlq", "list", "--json"], env=env,
                            capture_output=True, text=True, timeout=60, check=True)
    entries = [json.loads(line) for line in listed.stdout.splitlines()]
    assert [e["reason"].split(" (")[0] for e in entries] == ["not JSON", "not a Celery message"]
    assert {e["queue"] for e in entries} == {queue} and entries[0]["raw"] == "{not json"
    assert fake_worker.metric("rerankq_dlq_length") == 2
    purged = subprocess.run([sys.executable, "-m", "rerankq.cli", "dlq", "purge"], env=env, capture_output=True,
                            text=True, timeout=60, check=True)
    assert purged.stdout.strip() == "2 entries dropped"
    assert fake_worker.proc.poll() is None


def test_the_fake_is_only_reached_by_its_spec() -> None:
    from rerankq.errors import ModelLoadError
    from rerankq.models.loading import load_model

    assert load_model("fake:h100-2b").name == "fake:h100-2b"
    with pytest.raises(ModelLoadError, match="fake: takes hash, text or GPU-SIZE"):
        load_model("fake:tpu-9b")
    assert not Path("fake:hash").exists()  # a SPEC, never a path
