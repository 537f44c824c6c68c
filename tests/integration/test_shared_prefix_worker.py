"""Shared-prefix scoring through a real worker and through ``Qwen3VLReranker.process``: scores equal the
official one-pair-per-pass scores for text, image, video-file and frame-list queries against mixed documents
(a truncated one included); the shared path ran (one prefix pass per job, prefix tokens saved); and with
``scoring.share_prefix`` off nothing is shared and the scores are the same."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from rerankq.cli.cluster import RedisServer, S3Server
from rerankq.client import RerankClient
from tests.integration.conftest import WorkerProcess, start_worker, stop_worker

MAX_LENGTH = 1024  # the long document below is cut to fit
# Scores are sigmoids of logits; 1e-5 in logit is at most 2.5e-6 in score (the sigmoid's slope is <= 1/4).
TOL = 2.5e-6


def requests(media: dict[str, str]) -> list[dict[str, Any]]:
    documents = [
        {"text": "a dog on a sofa"},
        {"image": media["dog.jpg"]},
        {"video": media["clip.mp4"]},
        {"text": "four frames", "video": [media[f"frame{i}.png"] for i in range(4)]},
        {"text": "striped cats sleeping in the sun " * 300},
    ]
    queries = [
        {"text": "a striped cat"},
        {"text": "a striped cat", "image": media["cat.png"]},
        {"video": media["clip.mp4"]},
        {"video": [media[f"frame{i}.png"] for i in range(4)], "text": "frames"},
    ]
    return [{"instruction": "Find the matching product.", "query": q, "documents": documents, "fps": 2.0}
            for q in queries]


@pytest.fixture(scope="module")
def official(tiny_model_dir: Path, s3_server: S3Server):  # type: ignore[no-untyped-def]
    """The official way: one pair per forward pass, no shared prefix, same length budget as the workers."""
    from rerankq.models import Qwen3VLReranker

    return Qwen3VLReranker(str(tiny_model_dir), device="cpu", torch_dtype="float32", s3_endpoint_url=s3_server.url,
                           max_length=MAX_LENGTH, share_prefix=False, batch_max_pairs=1)


def worker(share: bool, tiny_model_dir: Path, redis_server: RedisServer, s3_server: S3Server,
           tmp_path_factory: pytest.TempPathFactory) -> Iterator[WorkerProcess]:
    process = start_worker(tiny_model_dir, redis_server.url, s3_server.url, tmp_path_factory.mktemp("worker"),
                           RERANKQ_SCORING__SHARE_PREFIX=str(share).lower(),
                           RERANKQ_SCORING__MAX_LENGTH=str(MAX_LENGTH), RERANKQ_BATCH__FLUSH_INTERVAL_MS="200")
    yield process
    stop_worker(process)


@pytest.fixture(scope="module")
def sharing_worker(tiny_model_dir, redis_server, s3_server, tmp_path_factory):  # type: ignore[no-untyped-def]
    yield from worker(True, tiny_model_dir, redis_server, s3_server, tmp_path_factory)


@pytest.fixture(scope="module")
def plain_worker(tiny_model_dir, redis_server, s3_server, tmp_path_factory):  # type: ignore[no-untyped-def]
    yield from worker(False, tiny_model_dir, redis_server, s3_server, tmp_path_factory)


def run_jobs(process: WorkerProcess, jobs: list[dict[str, Any]]) -> list[list[float]]:
    with RerankClient(process.settings) as client:
        ids = client.submit_many(jobs)  # at once: the worker takes them in one round, suffixes share passes
        results = [client.result(job_id, timeout=300) for job_id in ids]
    assert all(r["errors"] == [] for r in results)
    assert all(r["usage"]["tokens"] <= MAX_LENGTH * len(jobs[0]["documents"]) for r in results)
    return [r["scores"] for r in results]


def test_a_sharing_worker_scores_as_one_pair_per_pass(sharing_worker: WorkerProcess, media: dict[str, str],
                                                      official: Any) -> None:
    jobs = requests(media)
    got = run_jobs(sharing_worker, jobs)
    for scores, job in zip(got, jobs, strict=True):
        assert scores == pytest.approx(official.process(job), abs=TOL)
    assert sharing_worker.metric("rerankq_prefixes_computed_total") == len(jobs)  # each job's prefix once
    assert 1 <= sharing_worker.metric("rerankq_prefix_passes_total") <= len(jobs)
    assert sharing_worker.metric("rerankq_prefix_tokens_saved_total") > 0
    assert sharing_worker.metric("rerankq_prefix_tokens_computed_total") > 0
    assert official.model.sharing.prefixes_computed == 0


def test_with_sharing_off_nothing_is_shared(plain_worker: WorkerProcess, media: dict[str, str],
                                            official: Any) -> None:
    jobs = requests(media)
    got = run_jobs(plain_worker, jobs)
    for scores, job in zip(got, jobs, strict=True):
        assert scores == pytest.approx(official.process(job), abs=TOL)
    assert plain_worker.metric("rerankq_prefixes_computed_total") == 0
    assert plain_worker.metric("rerankq_prefix_tokens_saved_total") == 0


def test_process_shares_the_prefix(tiny_model_dir: Path, s3_server: S3Server, media: dict[str, str],
                                   official: Any) -> None:
    from rerankq.models import Qwen3VLReranker

    model = Qwen3VLReranker(str(tiny_model_dir), device="cpu", torch_dtype="float32", s3_endpoint_url=s3_server.url,
                            max_length=MAX_LENGTH)
    jobs = requests(media)
    for job in jobs:
        assert model.process(job) == pytest.approx(official.process(job), abs=TOL)
    stats = model.model.sharing
    assert stats.prefixes_computed == len(jobs) and stats.prefix_tokens_saved > 0
