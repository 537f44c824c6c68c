"""Embedding jobs through every door: the gateway's OpenAI ``/v1/embeddings`` and Cohere ``/v2/embed`` (raw HTTP
and Cohere's own SDK), ``rerankq embed`` and ``rerankq submit``, and JSONL batches with ``/v1/embeddings`` lines
(vectors out as JSONL and as ``.npy`` with an index). One deployment: a reranker worker (the default model) and
an embedding worker share one Redis and one queue prefix, with a gateway in front. Vectors through each door are
compared with the same inputs through the SDK (same worker), so every shape is held to rerankq's own answer."""

from __future__ import annotations

import base64
import io
import json
import os
import subprocess
import sys
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest

from rerankq.cli.cluster import RedisServer, S3Server, stop_process
from rerankq.cli.samples import image_bytes, noise_image
from rerankq.client import RerankClient
from rerankq.settings import Settings
from tests.integration.conftest import GatewayProcess, WorkerProcess, start_gateway, start_worker, stop_worker

TOL = 1e-5
BUCKET = "embed-batches"


@dataclass
class Deployment:
    reranker: WorkerProcess
    embedding: WorkerProcess
    gateway: GatewayProcess
    settings: Settings
    env: dict[str, str]
    embed_spec: str
    rerank_spec: str


@pytest.fixture(scope="module")
def deployment(tiny_embed_dir: Path, tiny_model_dir: Path, redis_server: RedisServer, s3_server: S3Server,
               s3: Any, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Deployment]:
    s3.create_bucket(Bucket=BUCKET)
    prefix = f"reach{uuid.uuid4().hex[:6]}"
    common = {"RERANKQ_QUEUE_PREFIX": prefix, "RERANKQ_MODEL": str(tiny_model_dir),
              "RERANKQ_BATCH__FLUSH_INTERVAL_MS": "50", "RERANKQ_BATCHES__PART_INTERVAL_S": "0.5"}
    logs = tmp_path_factory.mktemp("reach")
    reranker = start_worker(tiny_model_dir, redis_server.url, s3_server.url, logs, **common)
    embedding = start_worker(tiny_embed_dir, redis_server.url, s3_server.url, logs, **common)
    gateway = start_gateway(embedding.env, logs)
    settings = Settings(redis_url=redis_server.url, s3_endpoint_url=s3_server.url, queue_prefix=prefix,
                        model=str(tiny_model_dir), allow_file_urls=True)
    try:
        yield Deployment(reranker, embedding, gateway, settings, embedding.env, str(tiny_embed_dir),
                         str(tiny_model_dir))
    finally:
        stop_process(gateway.proc)
        stop_worker(reranker)
        stop_worker(embedding)


@pytest.fixture()
def http(deployment: Deployment) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=deployment.gateway.url, timeout=120) as client:
        yield client


def sdk_vectors(d: Deployment, inputs: list[Any], **fields: Any) -> np.ndarray:
    with RerankClient(d.settings) as client:
        result = client.embed(inputs, model=d.embed_spec, timeout=180, **fields)
    assert result["errors"] == []
    return np.array(result["embeddings"], dtype=np.float32)


def decode(vector: str) -> np.ndarray:
    return np.frombuffer(base64.b64decode(vector), "<f4")


def png_data_uri(seed: int) -> tuple[bytes, str]:
    png = image_bytes(noise_image(40, 40, seed=seed))
    return png, "data:image/png;base64," + base64.b64encode(png).decode()


def test_models_say_what_each_model_serves(http: httpx.Client, deployment: Deployment) -> None:
    models = {m["id"]: m for m in http.get("/v1/models").json()["data"]}
    assert models[deployment.embed_spec]["task"] == "embed"
    assert models[deployment.embed_spec]["embedding_dim"] == 64
    assert models[deployment.rerank_spec]["task"] == "rerank" and "embedding_dim" not in models[deployment.rerank_spec]


def test_openai_string_list_dimensions_and_base64(http: httpx.Client, deployment: Deployment) -> None:
    name = Path(deployment.embed_spec).name  # a model is named as its SPEC or the SPEC's last part
    one = http.post("/v1/embeddings", json={"model": name, "input": "a red apple"}).json()
    assert one["object"] == "list" and one["model"] == name and one["errors"] == []
    assert [(d["object"], d["index"]) for d in one["data"]] == [("embedding", 0)]
    assert one["usage"]["prompt_tokens"] == one["usage"]["total_tokens"] > 0
    texts = ["a red apple", "green pears", "bicycle repair"]
    want = sdk_vectors(deployment, texts)
    assert np.abs(np.array(one["data"][0]["embedding"]) - want[0]).max() < TOL
    many = http.post("/v1/embeddings", json={"model": name, "input": texts, "user": "someone"}).json()
    assert np.abs(np.array([d["embedding"] for d in many["data"]]) - want).max() < TOL
    cut = http.post("/v1/embeddings", json={"model": name, "input": texts, "dimensions": 16,
                                            "encoding_format": "base64"}).json()
    got = np.stack([decode(d["embedding"]) for d in cut["data"]])
    assert got.shape == (3, 16)
    assert np.abs(got - sdk_vectors(deployment, texts, dimensions=16)).max() < TOL
    assert 'route="/v1/embeddings"' in http.get("/metrics").text  # its own label, not "other"


def test_openai_multimodal_inputs_with_references_uploads_and_data_uris(
        http: httpx.Client, deployment: Deployment, media: dict[str, str]) -> None:
    png, data_uri = png_data_uri(seed=7)
    uploaded = http.post("/v1/media", files={"file": ("x.png", png)}).json()["uri"]
    body = {"model": deployment.embed_spec, "input": [
        {"image": media["cat.png"]},
        {"type": "image_url", "image_url": {"url": uploaded}},
        {"content": [{"type": "text", "text": "a noisy square"},
                     {"type": "image_url", "image_url": {"url": data_uri}}]},
        {"text": "a dog", "image": media["dog.jpg"]},
    ]}
    response = http.post("/v1/embeddings", json=body).json()
    assert response["errors"] == [] and [d["index"] for d in response["data"]] == [0, 1, 2, 3]
    want = sdk_vectors(deployment, [{"image": media["cat.png"]}, {"image": uploaded},
                                    {"text": "a noisy square", "image": uploaded},  # a data: URI is stored as uploads
                                    {"text": "a dog", "image": media["dog.jpg"]}])
    got = np.array([d["embedding"] for d in response["data"]])
    assert np.abs(got - want).max() < TOL
    assert np.abs(got[1] - got[2]).max() > 1e-3  # the text moved the vector: the comparison can fail


def test_a_missing_image_fails_alone(http: httpx.Client, deployment: Deployment, media: dict[str, str]) -> None:
    missing = media["cat.png"].replace("cat.png", "no-such.png")
    response = http.post("/v1/embeddings", json={"model": deployment.embed_spec,
                                                 "input": ["fine", {"image": missing}, "also fine"]})
    assert response.status_code == 200
    body = response.json()
    assert [d["index"] for d in body["data"]] == [0, 2]
    assert [e["index"] for e in body["errors"]] == [1] and "no-such.png" in body["errors"][0]["error"]


def test_refusals_name_the_field(http: httpx.Client, deployment: Deployment) -> None:
    named = http.post("/v1/embeddings", json={"model": deployment.rerank_spec, "input": "a"})
    assert named.status_code == 400 and named.json()["field"] == "task"
    assert deployment.rerank_spec in named.json()["message"] and "serves rerank jobs" in named.json()["message"]
    default = http.post("/v1/embeddings", json={"input": "a"})  # the deployment's default model is the reranker
    assert default.status_code == 400 and default.json()["field"] == "task"
    unknown = http.post("/v1/embeddings", json={"model": "no-such-model", "input": "a"})
    assert unknown.status_code == 404 and "no-such-model" in unknown.json()["message"]
    for body, field in [({"model": deployment.embed_spec, "input": "a", "dimensions": 65}, "dimensions"),
                        ({"model": deployment.embed_spec, "input": [[101, 102]]}, "input[0]"),
                        ({"model": deployment.embed_spec, "input": "a", "encoding_format": "int8"},
                         "encoding_format"),
                        ({"model": deployment.embed_spec, "inputs": ["a"]}, "inputs")]:
        refused = http.post("/v1/embeddings", json=body)
        assert (refused.status_code, refused.json().get("field")) == (400, field), refused.json()
    rerank = http.post("/v1/rerank", json={"model": deployment.embed_spec, "query": "a", "documents": ["b"]})
    assert rerank.status_code == 400 and "serves embed jobs" in rerank.json()["message"]


def test_cohere_sdk_embed(deployment: Deployment, http: httpx.Client, media: dict[str, str]) -> None:
    import cohere

    texts = ["a red apple", "green pears"]
    want = sdk_vectors(deployment, texts)
    _, data_uri = png_data_uri(seed=8)
    with httpx.Client(timeout=120) as transport:
        co = cohere.ClientV2(api_key="unused", base_url=deployment.gateway.url, httpx_client=transport)
        response = co.embed(model=Path(deployment.embed_spec).name, input_type="search_document", texts=texts,
                            embedding_types=["float", "base64"])
        images = co.embed(model=deployment.embed_spec, input_type="image", images=[data_uri], output_dimension=8)
        missing = media["cat.png"].replace("cat.png", "no-such.png")
        mixed = co.embed(model=deployment.embed_spec, input_type="search_document", inputs=[
            {"content": [{"type": "image_url", "image_url": {"url": missing}}]},
            {"content": [{"type": "text", "text": "a red apple"}]}])
        with pytest.raises(cohere.BadRequestError) as refused:
            co.embed(model=deployment.embed_spec, input_type="search_query", texts=["a"],
                     embedding_types=["int8"])
    assert np.abs(np.array(response.embeddings.float_) - want).max() < TOL
    assert np.abs(np.stack([decode(v) for v in response.embeddings.base64 or []]) - want).max() < TOL
    assert response.texts == texts and response.id
    assert http.get(f"/v1/jobs/{response.id}").json()["state"] == "succeeded"
    assert np.array(images.embeddings.float_).shape == (1, 8)
    assert mixed.embeddings.float_ is not None and mixed.embeddings.float_[0] is None
    assert np.abs(np.array(mixed.embeddings.float_[1]) - want[0]).max() < TOL
    assert [e["index"] for e in (mixed.model_extra or {})["errors"]] == [0]
    error = refused.value.body
    assert error["field"] == "embedding_types" and "int8" in error["message"] and "float" in error["message"]


def test_async_embedding_job_over_http(http: httpx.Client, deployment: Deployment) -> None:
    _, data_uri = png_data_uri(seed=9)
    accepted = http.post("/v1/jobs", json={"task": "embed", "model": deployment.embed_spec,
                                           "inputs": ["a red apple", {"image": data_uri}]})
    assert accepted.status_code == 202, accepted.json()
    job_id = accepted.json()["job_id"]
    with RerankClient(deployment.settings) as client:
        client.result(job_id, timeout=120)  # waits for its end
    result = http.get(f"/v1/jobs/{job_id}/result")
    body = result.json()
    assert result.status_code == 200 and body["task"] == "embed" and body["errors"] == []
    assert np.abs(np.array(body["embeddings"][0]) - sdk_vectors(deployment, ["a red apple"])[0]).max() < TOL


def rerankq(d: Deployment, *argv: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "rerankq.cli", *argv], env={**os.environ, **d.env},
                          capture_output=True, text=True, timeout=180)


def test_cli_embed_submit_and_batch_npy(deployment: Deployment, media: dict[str, str], tmp_path: Path,
                                       s3: Any) -> None:
    texts = ["a red apple", "green pears"]
    inputs = tmp_path / "inputs.jsonl"
    inputs.write_text(json.dumps({"image": media["cat.png"]}) + "\n\n" + json.dumps("bicycle repair") + "\n")
    out = rerankq(deployment, "embed", *texts, "--input", str(inputs), "--model", deployment.embed_spec,
                  "--dimensions", "8", "--encoding", "base64", "--timeout", "120")
    assert out.returncode == 0, out.stderr
    result = json.loads(out.stdout)
    got = np.stack([decode(v) for v in result["embeddings"]])
    want = sdk_vectors(deployment, [*texts, {"image": media["cat.png"]}, "bicycle repair"], dimensions=8)
    assert result["dimensions"] == 8 and np.abs(got - want).max() < TOL
    job = tmp_path / "job.json"
    job.write_text(json.dumps({"task": "embed", "inputs": texts, "model": deployment.embed_spec}))
    out = rerankq(deployment, "submit", str(job), "--wait", "--timeout", "120")
    assert out.returncode == 0, out.stderr
    assert np.abs(np.array(json.loads(out.stdout)["embeddings"]) - sdk_vectors(deployment, texts)).max() < TOL
    line = {"custom_id": "z", "url": "/v1/embeddings", "body": {"model": deployment.embed_spec, "input": "z"}}
    (tmp_path / "in.jsonl").write_text(json.dumps(line) + "\n")
    out = rerankq(deployment, "batch", "submit", str(tmp_path / "in.jsonl"), "--output", f"s3://{BUCKET}/cli/",
                  "--npy", "--wait", "--timeout", "120", "--json")
    assert out.returncode == 0, out.stderr
    record = json.loads(out.stdout.splitlines()[-1])
    assert record["npy"] is True and record["state"] == "completed"
    assert s3.head_object(Bucket=BUCKET, Key="cli/results/part-00000.npy")["ContentLength"] > 128
    bad = rerankq(deployment, "embed", "a", "--model", deployment.embed_spec, "--dimensions", "65")
    assert bad.returncode == 2 and "65 is over the 64 dimensions" in bad.stderr
    empty = rerankq(deployment, "embed", "--model", deployment.embed_spec)
    assert empty.returncode == 2 and "nothing to embed" in empty.stderr


def read_part(s3: Any, uri: str) -> bytes:
    bucket, _, key = uri.removeprefix("s3://").partition("/")
    return bytes(s3.get_object(Bucket=bucket, Key=key)["Body"].read())


def test_a_batch_of_embedding_lines_writes_jsonl_and_npy(deployment: Deployment, s3: Any, http: httpx.Client,
                                                         media: dict[str, str]) -> None:
    missing = media["cat.png"].replace("cat.png", "no-such.png")
    spec = deployment.embed_spec
    lines = [
        {"custom_id": "a", "url": "/v1/embeddings", "body": {"model": spec, "input": ["one", "two"]}},
        {"custom_id": "b", "url": "/v1/embeddings", "body": {"model": spec, "input": [{"image": missing}, "three"]}},
        {"custom_id": "c", "url": "/v1/embeddings", "body": {"model": spec, "input": "four", "dimensions": 8}},
        {"custom_id": "r", "url": "/v1/rerank", "body": {"query": "q", "documents": ["d", "e"]}},
        {"custom_id": "x", "url": "/v1/embeddings", "body": {"model": spec, "input": "x", "dimensions": 0}},
    ]
    key = f"in/{uuid.uuid4().hex}.jsonl"
    s3.put_object(Bucket=BUCKET, Key=key, Body="".join(json.dumps(line) + "\n" for line in lines).encode())
    created = http.post("/v1/batches", json={"input": f"s3://{BUCKET}/{key}", "output": f"s3://{BUCKET}/out/{key}/",
                                             "npy": True})
    assert created.status_code == 202 and created.json()["npy"] is True
    with RerankClient(deployment.settings) as client:
        record = client.wait_batch(created.json()["batch_id"], timeout=180)
    assert record.state.value == "completed" and record.npy
    assert (record.counts["succeeded"], record.counts["failed"]) == (4, 1)
    manifest = json.loads(read_part(s3, f"s3://{BUCKET}/out/{key}/manifest.json"))
    results: dict[str, dict[str, Any]] = {}
    index: list[dict[str, Any]] = []  # each entry with the rows it points at
    for part in manifest["parts"]["results"]:
        for raw in read_part(s3, part["uri"]).decode().splitlines():
            results[json.loads(raw)["custom_id"]] = json.loads(raw)
        if "index" not in part:  # a part of rerank lines only
            continue
        arrays = {uri.rsplit("/", 1)[-1]: np.load(io.BytesIO(read_part(s3, uri))) for uri in part["npy"]}
        for raw in read_part(s3, part["index"]).decode().splitlines():
            entry = json.loads(raw)
            index.append({**entry, "vectors": arrays[entry["file"]][entry["row"]:entry["row"] + entry["rows"]]})
    errors = [json.loads(raw) for part in manifest["parts"]["errors"]
              for raw in read_part(s3, part["uri"]).decode().splitlines()]
    assert sorted(results) == ["a", "b", "c", "r"] and [e["custom_id"] for e in errors] == ["x"]
    assert "dimensions" in errors[0]["error"]["message"]
    assert np.abs(np.array(results["a"]["embeddings"]) - sdk_vectors(deployment, ["one", "two"])).max() < TOL
    assert results["b"]["embeddings"][0] is None and [e["index"] for e in results["b"]["errors"]] == [0]
    assert "scores" in results["r"]
    assert sorted(e["custom_id"] for e in index) == ["a", "b", "c"]  # the rerank line has no rows
    for entry in index:
        rows = entry["vectors"]
        assert rows.dtype == np.float32 and entry["line"] == results[entry["custom_id"]]["line"]
        for row, vector in zip(rows, results[entry["custom_id"]]["embeddings"], strict=True):
            if vector is None:
                assert np.isnan(row).all()
            else:
                assert np.abs(row - np.array(vector)).max() < 1e-6
    assert {e["custom_id"]: e["vectors"].shape for e in index} == {"a": (2, 64), "b": (2, 64), "c": (1, 8)}
