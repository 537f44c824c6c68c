"""Two-stage jobs: a rerank job with ``"recall": {"model": EMBED_MODEL, "top_k": K}`` is embedded by an embedding
worker (query and documents), narrowed to the K documents nearest the query, and reranked by a reranker worker,
both real processes on one Redis. The documents kept are the K nearest by the in-process embedder's vectors; their
scores are the reranker's for those documents; the rest have no score; a document that cannot be embedded is not
kept and says why; a recall model that is not an embedding model is refused at submit; and a reranker worker
killed while it waits for the embeddings loses nothing and embeds nothing twice."""

from __future__ import annotations

import signal
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from rerankq.cli.cluster import RedisServer, S3Server
from rerankq.client import RerankClient
from rerankq.errors import InvalidRequest
from rerankq.media.sides import ResolvedSide
from rerankq.models.qwen3vl_embed.loading import load_embedder
from rerankq.settings import Settings
from rerankq.worker.recall import child_ids
from tests.integration.conftest import WorkerProcess, start_worker, stop_worker, wait_for

DOCUMENTS = [f"document {i}: " + w for i, w in enumerate(
    ["a cat sleeps", "stock markets fell", "the cat and the dog", "rain in spain", "kittens play",
     "quantum physics", "a lion roars", "tax law", "feline behaviour", "bread recipes", "cats and mice",
     "football scores"])]


@dataclass
class Pair:
    settings: Settings
    reranker: WorkerProcess
    embedding: WorkerProcess
    embed_spec: str
    env: dict[str, str]


def _start(tiny_model_dir: Path, tiny_embed_dir: Path, redis_server: RedisServer, s3_server: S3Server,
           tmp: pytest.TempPathFactory) -> Pair:
    prefix = f"rc{uuid.uuid4().hex[:6]}"
    env = {"RERANKQ_QUEUE_PREFIX": prefix, "RERANKQ_MODEL": str(tiny_model_dir),
           "RERANKQ_BATCH__FLUSH_INTERVAL_MS": "50", "RERANKQ_LEASE_S": "3"}
    reranker = start_worker(tiny_model_dir, redis_server.url, s3_server.url, tmp.mktemp("rr"), **env)
    embedding = start_worker(tiny_embed_dir, redis_server.url, s3_server.url, tmp.mktemp("em"), **env)
    settings = Settings(redis_url=redis_server.url, s3_endpoint_url=s3_server.url, queue_prefix=prefix,
                        model=str(tiny_model_dir))
    return Pair(settings, reranker, embedding, str(tiny_embed_dir), env)


@pytest.fixture(scope="module")
def pair(tiny_model_dir: Path, tiny_embed_dir: Path, redis_server: RedisServer, s3_server: S3Server,
         tmp_path_factory: pytest.TempPathFactory) -> Iterator[Pair]:
    started = _start(tiny_model_dir, tiny_embed_dir, redis_server, s3_server, tmp_path_factory)
    yield started
    stop_worker(started.reranker)
    stop_worker(started.embedding)


def nearest(embed_dir: str, query: str, documents: list[str], k: int) -> list[int]:
    embedder = load_embedder(embed_dir)
    q = embedder.embed([ResolvedSide(texts=[query])])[0]
    d = embedder.embed([ResolvedSide(texts=[t]) for t in documents])
    sims = d @ q
    return sorted(sorted(range(len(documents)), key=lambda i: (-sims[i], i))[:k])


def test_recall_keeps_the_nearest_and_reranks_only_those(pair: Pair) -> None:
    query = "cats"
    with RerankClient(pair.settings) as client:
        job = {"query": query, "documents": DOCUMENTS, "top_n": 2, "recall": {"model": pair.embed_spec, "top_k": 4}}
        result = client.result(client.submit(job), timeout=240)
        kept = nearest(pair.embed_spec, query, DOCUMENTS, 4)
        assert result["recall"]["recalled"] == kept and result["recall"]["top_k"] == 4
        assert [i for i, s in enumerate(result["scores"]) if s is not None] == kept
        assert len(result["results"]) == 2 and {r["index"] for r in result["results"]} <= set(kept)
        assert result["errors"] == [] and result["usage"]["pairs"] == 4
        progress = client.status(result["job_id"])["progress"]
        assert progress == {"pairs_done": 4, "pairs_total": 4}  # the pairs it reranked: the recalled documents
        direct = client.result(client.submit({"query": query, "documents": [DOCUMENTS[i] for i in kept]}),
                               timeout=240)
        assert [result["scores"][i] for i in kept] == pytest.approx(direct["scores"], abs=1e-6)


def test_a_document_that_cannot_be_embedded_is_not_kept_and_says_why(pair: Pair, media: dict[str, str]) -> None:
    missing = media["cat.png"].replace("cat.png", "gone.png")
    documents: list[Any] = [*DOCUMENTS[:5], {"image": missing}]
    with RerankClient(pair.settings) as client:
        job = {"query": "cats", "documents": documents, "recall": {"model": pair.embed_spec, "top_k": 2}}
        result = client.result(client.submit(job), timeout=240)
    assert 5 not in result["recall"]["recalled"] and len(result["recall"]["recalled"]) == 2
    assert [e["index"] for e in result["errors"]] == [5]
    error = result["errors"][0]["error"]
    assert error.startswith("documents[5]: recall:") and "gone.png" in error


def test_top_k_over_the_documents_embeds_nothing(pair: Pair) -> None:
    with RerankClient(pair.settings) as client:
        job_id = client.submit({"query": "cats", "documents": DOCUMENTS[:3],
                                "recall": {"model": pair.embed_spec, "top_k": 5}})
        result = client.result(job_id, timeout=240)
        assert "recall" not in result and all(s is not None for s in result["scores"])
        assert client.statuses(list(child_ids(job_id))) == [None, None]


def test_a_recall_model_that_does_not_embed_is_refused_at_submit(pair: Pair, tiny_model_dir: Path) -> None:
    with RerankClient(pair.settings) as client:
        with pytest.raises(InvalidRequest, match="serves rerank jobs") as caught:
            client.submit({"query": "q", "documents": ["a", "b"], "recall": {"model": str(tiny_model_dir),
                                                                              "top_k": 1}})
        assert caught.value.field == "recall.model"
        with pytest.raises(InvalidRequest, match="top_k") as caught:
            client.submit({"query": "q", "documents": ["a"], "recall": {"model": pair.embed_spec, "top_k": 0}})
        assert caught.value.field == "recall.top_k"


def test_recall_through_the_gateway_the_cli_and_a_batch(pair: Pair, s3: Any, tmp_path: Path) -> None:
    import contextlib
    import json
    import os
    import subprocess
    import sys

    import httpx

    from rerankq.cli.cluster import stop_process
    from tests.integration.conftest import start_gateway

    recall = {"model": pair.embed_spec, "top_k": 3}
    kept = nearest(pair.embed_spec, "cats", DOCUMENTS, 3)
    gateway = start_gateway(pair.reranker.env, tmp_path)
    try:
        reply = httpx.post(f"{gateway.url}/v2/rerank", timeout=240,
                           json={"model": str(pair.settings.model), "query": "cats", "documents": DOCUMENTS,
                                 "recall": recall})
        assert reply.status_code == 200, reply.text
        assert reply.json()["recall"]["recalled"] == kept
        assert {r["index"] for r in reply.json()["results"]} == set(kept)
    finally:
        stop_process(gateway.proc)
    job = tmp_path / "job.json"
    job.write_text(json.dumps({"query": "cats", "documents": DOCUMENTS, "recall": recall}))
    done = subprocess.run([sys.executable, "-m", "rerankq.cli", "submit", str(job), "--wait"], capture_output=True,
                          text=True, timeout=240, env={**os.environ, **pair.reranker.env})
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout)["recall"]["recalled"] == kept
    with contextlib.suppress(s3.exceptions.BucketAlreadyOwnedByYou):
        s3.create_bucket(Bucket="recall-batch")
    line = {"custom_id": "r1", "query": "cats", "documents": DOCUMENTS, "recall": recall}
    s3.put_object(Bucket="recall-batch", Key="in.jsonl", Body=(json.dumps(line) + "\n").encode())
    with RerankClient(pair.settings) as client:
        client.submit_batch("s3://recall-batch/in.jsonl", "s3://recall-batch/out/",
                            batch_id=f"rb{uuid.uuid4().hex[:6]}")
        listing: list[Any] = []

        def written() -> bool:
            listing[:] = s3.list_objects_v2(Bucket="recall-batch", Prefix="out/results/").get("Contents", [])
            return bool(listing)

        wait_for(written, 240, "the batch's results")
    body = s3.get_object(Bucket="recall-batch", Key=listing[0]["Key"])["Body"].read().decode()
    row = json.loads(body.splitlines()[0])
    assert row["custom_id"] == "r1" and "recalled" in json.dumps(row), row
    assert json.dumps(kept) in json.dumps(row)


@pytest.mark.slow
def test_a_reranker_killed_while_it_waits_for_recall_loses_nothing_and_embeds_once(
        tiny_model_dir: Path, tiny_embed_dir: Path, redis_server: RedisServer, s3_server: S3Server,
        tmp_path_factory: pytest.TempPathFactory) -> None:
    run = _start(tiny_model_dir, tiny_embed_dir, redis_server, s3_server, tmp_path_factory)
    stop_worker(run.embedding)  # the embeddings wait in their queue while the reranker waits for them
    try:
        with RerankClient(run.settings) as client:
            job_id = client.submit({"query": "cats", "documents": DOCUMENTS,
                                    "recall": {"model": run.embed_spec, "top_k": 3}})
            wait_for(lambda: all(client.statuses(list(child_ids(job_id)))), 60, "the recall jobs to be sent")
            run.reranker.proc.send_signal(signal.SIGKILL)
            run.reranker.proc.wait(30)
            run.reranker = start_worker(tiny_model_dir, redis_server.url, s3_server.url, tmp_path_factory.mktemp("rr2"),
                                        **run.env)
            run.embedding = start_worker(tiny_embed_dir, redis_server.url, s3_server.url,
                                         tmp_path_factory.mktemp("em2"), **run.env)
            result = client.result(job_id, timeout=240)
            assert len(result["recall"]["recalled"]) == 3
            assert result["recall"]["recalled"] == nearest(run.embed_spec, "cats", DOCUMENTS, 3)
            assert run.embedding.metric("rerankq_jobs_total", 'state="succeeded"') == 2  # each embedding once
            assert client.jobs.record(job_id).state.value == "succeeded"
    finally:
        stop_worker(run.reranker)
        stop_worker(run.embedding)
