"""Embedding jobs through the queue: a real worker of the tiny Qwen3-VL-Embedding checkpoint takes them from Redis,
runs them through the round engine, and writes vectors back; the SDK submits and waits. Every vector is the
in-process ``Embedder``'s for the same input (which ``test_embed_fidelity`` holds to the official code), whatever
the other inputs of its pass; per-input errors leave the other inputs embedded; ``dimensions`` cuts and
renormalises; ``base64`` is float32; a large result goes to S3; the vector cache answers a repeated input; an
embedding worker and a reranker worker share one Redis, and each refuses, at submit, the other's jobs."""

from __future__ import annotations

import base64
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from rerankq.cli.cluster import RedisServer, S3Server
from rerankq.client import RerankClient
from rerankq.errors import InvalidRequest, JobFailed
from rerankq.media.resolver import MediaResolver
from rerankq.media.sides import Side, VisionBudget
from rerankq.models.qwen3vl_embed.loading import load_embedder
from rerankq.models.qwen3vl_embed.model import Embedder
from rerankq.settings import Settings
from tests.integration.conftest import WorkerProcess, start_worker, stop_worker, wait_for

TOL = 1e-5
CACHE_ARGS = ["--maxmemory", "64mb", "--maxmemory-policy", "allkeys-lru"]


@pytest.fixture(scope="module")
def embedder(tiny_embed_dir: Path) -> Embedder:
    return load_embedder(str(tiny_embed_dir))


def expected(embedder: Embedder, s3_url: str, inputs: list[Any], instruction: str | None = None,
             dimensions: int | None = None) -> np.ndarray:
    """The in-process vectors of ``inputs`` (one at a time: no batching), media through the same resolver."""
    settings = Settings(s3_endpoint_url=s3_url, allow_file_urls=True)
    sides = [Side.from_dict({"text": i} if isinstance(i, str) else i) for i in inputs]
    resolved = list(MediaResolver(settings, embedder.preprocessor).resolve_sides(sides, VisionBudget()))
    return np.stack([embedder.embed([side], instruction, dimensions)[0] for side in resolved])


def vectors(result: dict[str, Any]) -> np.ndarray:
    rows = [np.frombuffer(base64.b64decode(v), "<f4") if isinstance(v, str) else np.array(v, dtype=np.float32)
            for v in result["embeddings"]]
    return np.stack(rows)


def test_texts_images_videos_and_mixes_embed_as_in_process(embed_worker: WorkerProcess, embedder: Embedder,
                                                           media: dict[str, str], s3_server: S3Server) -> None:
    inputs: list[Any] = ["a cat on a mat", {"image": media["cat.png"]}, {"video": media["clip.mp4"]},
                         {"text": "two frames", "video": [media["frame0.png"], media["frame1.png"]]},
                         {"text": "a dog", "image": media["dog.jpg"]}, ""]
    with RerankClient(embed_worker.settings) as client:
        result = client.embed(inputs, timeout=180)
    assert result["task"] == "embed" and result["errors"] == []
    assert result["dimensions"] == embedder.hidden_size == 64
    got = vectors(result)
    want = expected(embedder, s3_server.url, inputs)
    assert np.abs(got - want).max() < TOL
    assert np.allclose(np.linalg.norm(got, axis=1), 1.0, atol=1e-5)
    assert np.abs(got[0] - got[1]).max() > 1e-3  # inputs are told apart: the check can fail
    assert result["usage"]["inputs"] == len(inputs) and result["usage"]["tokens"] > len(inputs)


def test_instruction_dimensions_and_base64(embed_worker: WorkerProcess, embedder: Embedder,
                                           s3_server: S3Server) -> None:
    texts = ["what is the capital of france", "paris"]
    with RerankClient(embed_worker.settings) as client:
        result = client.embed(texts, instruction="Retrieve passages that answer the question",
                              dimensions=16, encoding_format="base64", timeout=180)
    assert result["dimensions"] == 16 and all(isinstance(v, str) for v in result["embeddings"])
    got = vectors(result)
    assert got.shape == (2, 16)
    want = expected(embedder, s3_server.url, texts, "Retrieve passages that answer the question", 16)
    assert np.abs(got - want).max() < TOL
    plain = expected(embedder, s3_server.url, texts, None, 16)
    assert np.abs(got - plain).max() > 1e-4  # the instruction moved the vectors


def test_a_bad_input_fails_alone_and_all_bad_fail_the_job(embed_worker: WorkerProcess, media: dict[str, str]) -> None:
    missing = media["cat.png"].replace("cat.png", "no-such.png")
    with RerankClient(embed_worker.settings) as client:
        result = client.embed(["fine", {"image": missing}, {"image": media["cat.png"]}], timeout=180)
        assert [e["index"] for e in result["errors"]] == [1]
        assert "no-such.png" in result["errors"][0]["error"]
        assert result["embeddings"][1] is None and result["embeddings"][0] is not None
        assert result["embeddings"][2] is not None
        job_id = client.submit({"task": "embed", "inputs": [{"image": missing}]})
        with pytest.raises(JobFailed, match="every input failed"):
            client.result(job_id, timeout=180)


def test_bad_fields_are_refused_at_submit_naming_them(embed_worker: WorkerProcess) -> None:
    with RerankClient(embed_worker.settings) as client:
        for request, field, words in [
            ({"task": "embed", "inputs": []}, "inputs", "at least 1"),
            ({"task": "embed", "inputs": ["a"], "dimensions": 0}, "dimensions", "greater than or equal to 1"),
            ({"task": "embed", "inputs": ["a"], "encoding_format": "int8"}, "encoding_format", "float"),
            ({"task": "embed", "inputs": ["a"], "top_n": 3}, "top_n", "unknown field"),
            ({"task": "classify", "inputs": ["a"]}, "task", "rerank, embed"),
            ({"task": "embed", "inputs": [{"audio": "x"}]}, "inputs[0].audio", "unknown field"),
        ]:
            with pytest.raises(InvalidRequest, match=words) as caught:
                client.submit(request)
            assert caught.value.field == field, (request, caught.value)


def test_dimensions_over_the_models_are_refused(embed_worker: WorkerProcess) -> None:
    """At submit from the registry; and by the worker for a message that skipped the check (a raw producer)."""
    from rerankq import keys

    with RerankClient(embed_worker.settings) as client:
        with pytest.raises(InvalidRequest, match=r"65 is over the 64 dimensions") as caught:
            client.submit({"task": "embed", "inputs": ["a"], "dimensions": 65})
        assert caught.value.field == "dimensions"
        job_id = f"raw-{uuid.uuid4().hex[:8]}"  # a plain Celery producer: no submit-time check
        client.celery.send_task(keys.TASK_NAME, args=[{"task": "embed", "inputs": ["a"], "dimensions": 65,
                                                       "job_id": job_id}],
                                task_id=job_id, queue=f"{embed_worker.settings.queue_prefix}.normal")
        wait_for(lambda: (client.statuses([job_id])[0] or {}).get("state") == "failed", 120, "the raw job to end")
        with pytest.raises(JobFailed, match=r"dimensions: 65 is over the 64"):
            client.result(job_id, timeout=0)


def test_a_large_result_goes_to_s3(embed_worker: WorkerProcess) -> None:
    texts = [f"text number {i}" for i in range(12)]  # 12 x 64 floats: over the 4 KiB inline limit
    with RerankClient(embed_worker.settings) as client:
        job_id = client.submit({"task": "embed", "inputs": texts})
        result = client.result(job_id, timeout=180)
        assert (client.jobs.record(job_id).result_uri or "").startswith("s3://")
    assert len(result["embeddings"]) == 12 and result["errors"] == []


@pytest.fixture(scope="module")
def cached_worker(tiny_embed_dir: Path, redis_server: RedisServer, s3_server: S3Server,
                  tmp_path_factory: pytest.TempPathFactory) -> Iterator[WorkerProcess]:
    with RedisServer(args=CACHE_ARGS) as cache:
        worker = start_worker(tiny_embed_dir, redis_server.url, s3_server.url, tmp_path_factory.mktemp("cached"),
                              RERANKQ_CACHE__REDIS_URL=cache.url, RERANKQ_BATCH__FLUSH_INTERVAL_MS="50")
        yield worker
        stop_worker(worker)


def test_the_cache_answers_a_repeated_input_with_the_same_vector(cached_worker: WorkerProcess,
                                                                  media: dict[str, str]) -> None:
    token = uuid.uuid4().hex
    inputs: list[Any] = [f"cached {token}", {"image": media["cat.png"], "text": token}]
    with RerankClient(cached_worker.settings) as client:
        first = client.embed(inputs, timeout=180)
        again = client.embed([*inputs, f"fresh {token}"], dimensions=8, timeout=180)
        other = client.embed(inputs, instruction="Another task", timeout=180)
    assert first["usage"]["cached_inputs"] == 0
    assert again["usage"]["cached_inputs"] == 2 and again["usage"]["cached_indices"] == [0, 1]
    full = vectors(first)
    cut = full[:, :8] / np.linalg.norm(full[:, :8], axis=1, keepdims=True)
    assert np.abs(vectors(again)[:2] - cut).max() < 1e-6  # the cached full vector, cut for this job
    assert other["usage"]["cached_inputs"] == 0  # another instruction: another key


def test_an_embedding_and_a_reranker_worker_share_one_redis(
        tiny_embed_dir: Path, tiny_model_dir: Path, redis_server: RedisServer, s3_server: S3Server,
        tmp_path_factory: pytest.TempPathFactory) -> None:
    prefix = f"mix{uuid.uuid4().hex[:6]}"
    embed_spec = str(tiny_embed_dir)
    common = {"RERANKQ_QUEUE_PREFIX": prefix, "RERANKQ_MODEL": str(tiny_model_dir),
              "RERANKQ_BATCH__FLUSH_INTERVAL_MS": "50"}
    reranker = start_worker(tiny_model_dir, redis_server.url, s3_server.url, tmp_path_factory.mktemp("mix"), **common)
    embedding = start_worker(tiny_embed_dir, redis_server.url, s3_server.url, tmp_path_factory.mktemp("mix"), **common)
    try:
        settings = Settings(redis_url=redis_server.url, s3_endpoint_url=s3_server.url, queue_prefix=prefix,
                            model=str(tiny_model_dir))
        with RerankClient(settings) as client:
            ranked = client.result(client.submit({"query": "a cat", "documents": ["a cat", "a car"]}), timeout=180)
            embedded = client.embed(["a cat", "a car"], model=embed_spec, timeout=180)
            assert len(ranked["scores"]) == 2 and len(embedded["embeddings"]) == 2
            with pytest.raises(InvalidRequest, match="serves embed jobs") as caught:
                client.submit({"query": "a cat", "documents": ["a cat"], "model": embed_spec})
            assert caught.value.field == "task" and embed_spec in str(caught.value)
            with pytest.raises(InvalidRequest, match="serves rerank jobs") as caught:
                client.submit({"task": "embed", "inputs": ["a cat"]})
            assert caught.value.field == "task"
    finally:
        stop_worker(reranker)
        stop_worker(embedding)
