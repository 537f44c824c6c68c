"""The HTTP gateway as a real process, in front of a private Redis, moto's S3 server and a real worker.

Scores through the gateway are compared with the same job through the SDK (same worker, same model), so every
compatible shape is checked against rerankq's own answer rather than against hard-coded numbers.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import json
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from rerankq.cli.cluster import stop_process
from rerankq.client import RerankClient
from rerankq.client.gateway.state import DEPTH_FRESH_S
from rerankq.errors import InvalidRequest
from rerankq.schema import parse_job
from rerankq.settings import LimitSettings, Settings
from tests.integration.conftest import GatewayProcess, WorkerProcess, start_gateway

KEY = "test-key-1"
HEADERS = {"Authorization": f"Bearer {KEY}"}
TOL = 1e-5
MAX_DOCS = 40
UPLOAD_CAP = 100_000


@pytest.fixture(scope="module")
def gateway(queue_worker: WorkerProcess, tmp_path_factory: pytest.TempPathFactory) -> Iterator[GatewayProcess]:
    gw = start_gateway(queue_worker.env, tmp_path_factory.mktemp("gateway"),
                       RERANKQ_API_KEYS=f"{KEY},other-key", RERANKQ_LIMITS__MAX_DOCUMENTS=str(MAX_DOCS),
                       RERANKQ_GATEWAY__MAX_BODY_BYTES=str(256 * 1024),
                       RERANKQ_GATEWAY__MAX_UPLOAD_BYTES=str(UPLOAD_CAP))
    yield gw
    stop_process(gw.proc)


@pytest.fixture(scope="module")
def idle_gateway(queue_worker: WorkerProcess, tmp_path_factory: pytest.TempPathFactory
                 ) -> Iterator[GatewayProcess]:
    """A gateway on a queue prefix no worker consumes: jobs stay queued."""
    env = {**queue_worker.env, "RERANKQ_QUEUE_PREFIX": queue_worker.settings.queue_prefix + "-idle"}
    gw = start_gateway(env, tmp_path_factory.mktemp("idle-gateway"), RERANKQ_GATEWAY__MAX_QUEUE_DEPTH="600",
                       RERANKQ_GATEWAY__RETRY_AFTER_S="7", RERANKQ_GATEWAY__CORS_ORIGINS="https://app.example")
    yield gw
    stop_process(gw.proc)


@pytest.fixture()
def http(gateway: GatewayProcess) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=gateway.url, headers=HEADERS, timeout=120) as client:
        yield client


@pytest.fixture()
def sdk(queue_worker: WorkerProcess) -> Iterator[RerankClient]:
    with RerankClient(queue_worker.settings) as client:
        yield client


def sdk_scores(sdk: RerankClient, query: dict[str, Any], documents: list[dict[str, Any]]) -> list[float | None]:
    result = sdk.result(sdk.submit({"query": query, "documents": documents}), timeout=120)
    return list(result["scores"])


def model_name(http: httpx.Client) -> str:
    models = http.get("/v1/models").json()["data"]
    assert len(models) == 1
    return str(models[0]["id"])


def test_models_lists_the_live_worker_and_its_device(http: httpx.Client, tiny_model_dir: Path) -> None:
    models = http.get("/v1/models").json()["data"]
    assert [(m["id"], m["devices"], m["workers"], m["quantization"]) for m in models] == [
        (str(tiny_model_dir), ["cpu"], 1, ["none"])]


def test_cohere_sdk_v2_and_v1(gateway: GatewayProcess, http: httpx.Client, sdk: RerankClient) -> None:
    import cohere

    texts = ["a red apple on a table", "green pears", "an apple pie recipe", "bicycle repair manual"]
    expected = sdk_scores(sdk, {"text": "red apple"}, [{"text": t} for t in texts])
    ranked = sorted(range(len(texts)), key=lambda i: -expected[i])  # type: ignore[operator]
    with httpx.Client(timeout=120) as transport:
        v2 = cohere.ClientV2(api_key=KEY, base_url=gateway.url, httpx_client=transport)
        # a model is named as its SPEC or the SPEC's last part
        response = v2.rerank(model=Path(model_name(http)).name, query="red apple", documents=texts, top_n=3)
        v1 = cohere.Client(api_key=KEY, base_url=gateway.url, httpx_client=transport)
        old = v1.rerank(model=model_name(http), query="red apple", documents=[{"text": t} for t in texts],
                        return_documents=True)
    assert [r.index for r in response.results] == ranked[:3]
    assert [r.relevance_score for r in response.results] == pytest.approx([expected[i] for i in ranked[:3]],
                                                                          abs=TOL)
    assert response.id and http.get(f"/v1/jobs/{response.id}").json()["state"] == "succeeded"
    assert [r.index for r in old.results] == ranked
    assert [r.document.text for r in old.results] == [texts[i] for i in ranked]  # type: ignore[union-attr]


def test_vllm_shape(http: httpx.Client, sdk: RerankClient) -> None:
    texts = ["The capital of France is Paris.", "Bananas are yellow.", "Paris is in Europe."]
    expected = sdk_scores(sdk, {"text": "What is the capital of France?"}, [{"text": t} for t in texts])
    body = http.post("/rerank", json={"model": model_name(http), "query": "What is the capital of France?",
                                      "documents": texts, "top_n": 2, "return_documents": True}).json()
    ranked = sorted(range(3), key=lambda i: -expected[i])  # type: ignore[operator]
    assert [r["index"] for r in body["results"]] == ranked[:2]
    assert [r["document"] for r in body["results"]] == [{"text": texts[i]} for i in ranked[:2]]
    assert body["usage"]["total_tokens"] > 0 and body["model"] == model_name(http)


def test_max_tokens_per_doc_cuts_documents_from_their_tail(http: httpx.Client, sdk: RerankClient) -> None:
    documents = ["one two three four five six", "seven eight"]
    expected = sdk_scores(sdk, {"text": "numbers"}, [{"text": "one two three"}, {"text": "seven eight"}])
    body = http.post("/v2/rerank", json={"query": "numbers", "documents": documents, "max_tokens_per_doc": 3}).json()
    assert {r["index"]: r["relevance_score"] for r in body["results"]} == pytest.approx(
        dict(enumerate(expected)), abs=TOL)
    uncapped = http.post("/v2/rerank", json={"query": "numbers", "documents": documents}).json()
    assert {r["index"]: r["relevance_score"] for r in uncapped["results"]}[0] != pytest.approx(expected[0], abs=TOL)


def data_uri(data: bytes, mime: str = "image/png") -> str:
    return f"data:{mime};base64,{base64.b64encode(data).decode()}"


def test_mixed_multimodal_documents(http: httpx.Client, sdk: RerankClient, media: dict[str, str], s3: Any) -> None:
    png = s3.get_object(Bucket="media", Key="q/cat.png")["Body"].read()
    documents = [
        {"text": "a striped cat"},
        {"image": media["dog.jpg"]},
        {"image": data_uri(png)},  # stored like an upload, scored like the same bytes in S3
        {"content": [{"type": "text", "text": "a clip"},
                     {"type": "video_url", "video_url": {"url": media["clip.mp4"]}}]},
        {"image": "s3://media/q/missing.png"},
    ]
    body = http.post("/v1/rerank", json={"query": {"text": "a cat", "image": media["cat.png"]},
                                         "documents": documents}).json()
    expected = sdk_scores(sdk, {"text": "a cat", "image": media["cat.png"]}, [
        {"text": "a striped cat"}, {"image": media["dog.jpg"]}, {"image": media["cat.png"]},
        {"text": "a clip", "video": media["clip.mp4"]}, {"image": "s3://media/q/missing.png"}])
    scores = {r["index"]: r["relevance_score"] for r in body["results"]}
    assert sorted(scores) == [0, 1, 2, 3]
    assert [scores[i] for i in range(4)] == pytest.approx(expected[:4], abs=TOL)
    assert [e["index"] for e in body["errors"]] == [4]
    assert body["results"][0]["document"] == documents[body["results"][0]["index"]]  # v1 echoes documents


def test_async_job_and_events(http: httpx.Client, gateway: GatewayProcess) -> None:
    job = {"query": {"text": "red"}, "documents": [{"text": f"document {i} about red things"} for i in range(12)]}
    accepted = http.post("/v1/jobs", json=job)
    assert accepted.status_code == 202
    job_id = accepted.json()["job_id"]
    assert accepted.headers["location"] == f"/v1/jobs/{job_id}"
    events = []
    with http.stream("GET", f"/v1/jobs/{job_id}/events") as stream:
        name = None
        for line in stream.iter_lines():
            if line.startswith("event: "):
                name = line[7:]
            elif line.startswith("data: "):
                events.append((name, json.loads(line[6:])))
    assert events[0][0] == "progress" and events[-1][0] == "end"
    assert events[-1][1]["state"] == "succeeded"
    assert events[-1][1]["progress"] == {"pairs_done": 12, "pairs_total": 12}
    result = http.get(f"/v1/jobs/{job_id}/result").json()
    assert sorted(r["index"] for r in result["results"]) == list(range(12))
    too_late = http.delete(f"/v1/jobs/{job_id}")  # finished jobs stay as they are, and the answer says so
    assert too_late.status_code == 409 and too_late.json()["state"] == "succeeded"


def test_batches_over_http(http: httpx.Client, s3: Any, sdk: RerankClient) -> None:
    s3.create_bucket(Bucket="gw-batches")
    lines = [{"custom_id": f"g{i}", "method": "POST", "url": "/v2/rerank",
              "body": {"query": "red", "documents": [f"red thing {i}", "blue"]}} for i in range(8)]
    body = "".join(json.dumps(line) + "\n" for line in lines) + '{"custom_id": "bad"}\n'
    s3.put_object(Bucket="gw-batches", Key="in.jsonl", Body=body.encode())
    created = http.post("/v1/batches", json={"input": "s3://gw-batches/in.jsonl", "output": "s3://gw-batches/out/",
                                             "batch_id": "gw-1", "completion_window": "1h"})
    assert created.status_code == 202 and created.headers["location"] == "/v1/batches/gw-1"
    assert created.json()["state"] == "validating" and created.json()["expires_at"] is not None
    record = sdk.wait_batch("gw-1", timeout=120)
    got = http.get("/v1/batches/gw-1").json()
    assert got["state"] == record.state.value == "completed"
    assert got["counts"]["succeeded"] == 8 and got["counts"]["failed"] == 1 and got["counts"]["total"] == 9
    assert [b["batch_id"] for b in http.get("/v1/batches").json()["data"]][:1] == ["gw-1"]
    cancelled = http.post("/v1/batches/gw-1/cancel").json()
    assert cancelled["state_before"] == "completed" and cancelled["state"] == "completed"
    assert http.get("/v1/batches/nope").json()["message"] == "no such batch: nope"
    refused = http.post("/v1/batches", json={"input": "in.jsonl", "output": "s3://gw-batches/out/"})
    assert refused.status_code == 400 and refused.json()["field"] == "input"
    refused = http.post("/v1/batches", json={"input": "s3://gw-batches/in.jsonl", "output": "s3://gw-batches/o/",
                                             "completion_window": "soon"})
    assert refused.status_code == 400 and refused.json()["field"] == "completion_window"


def test_upload_then_rerank(http: httpx.Client, s3: Any, sdk: RerankClient, media: dict[str, str]) -> None:
    png = s3.get_object(Bucket="media", Key="q/cat.png")["Body"].read()
    first = http.post("/v1/media", files={"file": ("notes.txt", png, "text/plain")}).json()
    again = http.post("/v1/media", files={"file": ("other-name.bin", png)}).json()
    assert first == again == {"uri": f"s3://uploads/u/{hashlib.sha256(png).hexdigest()}.png", "type": "image/png",
                              "bytes": len(png), "sha256": hashlib.sha256(png).hexdigest()}
    refused = http.post("/v1/media", files={"file": ("cat.png", b"just some text, not an image")})
    assert refused.status_code == 400 and "judged by its bytes" in refused.json()["message"]
    too_big = http.post("/v1/media", files={"file": ("big.png", png[:16] + bytes(UPLOAD_CAP))})
    assert too_big.status_code == 413 and f"the limit {UPLOAD_CAP} (gateway.max_upload_bytes)" in too_big.text
    body = http.post("/v2/rerank", json={"query": "a cat", "documents": [{"image": first["uri"]}, "a dog"]}).json()
    expected = sdk_scores(sdk, {"text": "a cat"}, [{"image": media["cat.png"]}, {"text": "a dog"}])
    assert {r["index"]: r["relevance_score"] for r in body["results"]} == pytest.approx(
        dict(enumerate(expected)), abs=TOL)


def test_keys_are_required_except_for_the_console_and_health(gateway: GatewayProcess) -> None:
    with httpx.Client(base_url=gateway.url, timeout=30) as anonymous:
        assert anonymous.get("/v1/models").status_code == 401
        wrong = anonymous.post("/v2/rerank", json={"query": "q", "documents": ["d"]},
                               headers={"Authorization": "Bearer nope"})
        assert wrong.status_code == 401 and "API key" in wrong.json()["message"]
        assert anonymous.get("/healthz").json() == {"status": "ok"}
        assert anonymous.get("/readyz").json() == {"status": "ok"}
        assert "<title>rerankq console</title>" in anonymous.get("/").text
        assert "fetch(" in anonymous.get("/static/app.js").text
        assert anonymous.get("/metrics", headers={"Authorization": "Bearer other-key"}).status_code == 200


def test_unknown_ids_and_models(http: httpx.Client) -> None:
    for method, path in (("GET", "/v1/jobs/nope"), ("GET", "/v1/jobs/nope/result"),
                         ("GET", "/v1/jobs/nope/events"), ("DELETE", "/v1/jobs/nope")):
        response = http.request(method, path)
        assert (response.status_code, response.json()["message"]) == (404, "no such job: nope"), path
    missing = http.post("/v2/rerank", json={"model": "rerank-v3.5", "query": "q", "documents": ["d"]})
    assert missing.status_code == 404 and "rerank-v3.5" in missing.json()["message"]


def test_caps_name_the_field_and_the_limit(http: httpx.Client) -> None:
    documents = [f"doc {i}" for i in range(MAX_DOCS + 1)]
    response = http.post("/v2/rerank", json={"query": "q", "documents": documents})
    with pytest.raises(InvalidRequest) as sdk_error:
        parse_job({"query": {"text": "q"}, "documents": [{"text": d} for d in documents]},
                  Settings(limits=LimitSettings(max_documents=MAX_DOCS)))
    assert response.status_code == 400
    assert response.json()["message"] == str(sdk_error.value)
    assert response.json()["field"] == "documents"
    big = http.post("/v2/rerank", json={"query": "q", "documents": ["x" * 1000] * 300})
    assert big.status_code == 413 and "gateway.max_body_bytes" in big.json()["message"]
    unknown = http.post("/v2/rerank", json={"query": "q", "documents": ["d"], "temperature": 1})
    assert (unknown.status_code, unknown.json()["field"]) == (400, "temperature")


def _clear(gateway: GatewayProcess) -> None:
    import redis

    client = redis.Redis.from_url(gateway.settings.redis_url)
    for key in client.scan_iter(match=f"{gateway.settings.queue_prefix}*"):
        client.delete(key)
    client.close()
    time.sleep(DEPTH_FRESH_S * 2)  # let the gateway's cached queue depth expire


def test_deep_queue_gets_429_with_retry_after(idle_gateway: GatewayProcess) -> None:
    _clear(idle_gateway)
    with RerankClient(idle_gateway.settings) as sdk:
        sdk.submit_many([{"query": {"text": "q"}, "documents": [{"text": "d"}]}] * 601)
    response = httpx.post(f"{idle_gateway.url}/v2/rerank", json={"query": "q", "documents": ["d"]}, timeout=30)
    assert response.status_code == 429 and response.headers["retry-after"] == "7"
    assert "gateway.max_queue_depth" in response.json()["message"]
    assert httpx.post(f"{idle_gateway.url}/v1/jobs", json={"query": {"text": "q"}, "documents": [{"text": "d"}]},
                      timeout=30).status_code == 429


def test_timeout_names_the_job_and_a_dropped_call_cancels_it(idle_gateway: GatewayProcess) -> None:
    _clear(idle_gateway)
    late = httpx.post(f"{idle_gateway.url}/v2/rerank?timeout=0.5", json={"query": "q", "documents": ["d"]},
                      timeout=30)
    assert late.status_code == 504, late.text
    job_id = late.json()["job_id"]
    assert job_id in late.json()["message"]
    assert httpx.get(f"{idle_gateway.url}/v1/jobs/{job_id}").json()["state"] == "queued"
    with pytest.raises(httpx.ReadTimeout):
        httpx.post(f"{idle_gateway.url}/v2/rerank", json={"query": "q", "documents": ["d"], "job_id": "dropped"},
                   headers={"X-Rerankq-Timeout": "60"}, timeout=1.0)
    deadline = time.monotonic() + 10
    while httpx.get(f"{idle_gateway.url}/v1/jobs/dropped").json()["state"] != "cancelled":
        assert time.monotonic() < deadline, "the dropped call's job was not cancelled"
        time.sleep(0.1)


def test_five_hundred_waiting_calls_share_one_waiter(idle_gateway: GatewayProcess) -> None:
    import redis

    _clear(idle_gateway)
    client = redis.Redis.from_url(idle_gateway.settings.redis_url)
    clients_before = client.info("clients")["connected_clients"]

    async def calls() -> tuple[list[int], float, int]:
        limits = httpx.Limits(max_connections=600, max_keepalive_connections=0)
        async with httpx.AsyncClient(base_url=idle_gateway.url, limits=limits, timeout=60) as http:
            tasks = [asyncio.create_task(http.post("/v2/rerank?timeout=15", json={"query": "q", "documents": ["d"]}))
                     for _ in range(500)]
            peak_waiting, peak_clients = 0.0, 0
            while not all(t.done() for t in tasks):
                metrics = (await http.get("/metrics")).text
                waiting = [float(line.split()[-1]) for line in metrics.splitlines()
                           if line.startswith("rerankq_gateway_waiting_calls ")]
                peak_waiting = max(peak_waiting, *waiting)
                peak_clients = max(peak_clients, client.info("clients")["connected_clients"])
                await asyncio.sleep(0.2)
            return [t.result().status_code for t in tasks], peak_waiting, peak_clients

    statuses, peak_waiting, peak_clients = asyncio.run(calls())
    assert statuses == [504] * 500
    assert peak_waiting == 500
    assert peak_clients - clients_before < 100  # the gateway's pool and waiter, not one connection per call
    client.close()


@pytest.fixture(scope="module")
def two_models(tiny_model_dir: Path, redis_server: Any, s3_server: Any, tmp_path_factory: pytest.TempPathFactory
               ) -> Iterator[tuple[GatewayProcess, Settings, Path]]:
    """Two workers with different checkpoints on one Redis and queue prefix; the first serves the default model."""
    from rerankq.models.qwen3vl.tiny import write_tiny_model
    from tests.integration.conftest import start_worker, stop_worker

    other = Path(write_tiny_model(tmp_path_factory.mktemp("other-model") / "tiny-b", seed=1))
    logs = tmp_path_factory.mktemp("two-models")
    prefix = f"two{uuid.uuid4().hex[:6]}"
    shared = {"RERANKQ_QUEUE_PREFIX": prefix, "RERANKQ_MODEL": str(tiny_model_dir)}
    first = start_worker(tiny_model_dir, redis_server.url, s3_server.url, logs, **shared)
    second = start_worker(other, redis_server.url, s3_server.url, logs, **shared)
    gw = start_gateway(first.env, logs)
    yield gw, Settings(redis_url=redis_server.url, queue_prefix=prefix), other
    stop_process(gw.proc)
    stop_worker(second)
    stop_worker(first)


def live_models(http: httpx.Client, count: int) -> dict[str, dict[str, Any]]:
    deadline = time.monotonic() + 20
    while len(models := http.get("/v1/models").json()["data"]) < count:
        assert time.monotonic() < deadline, models
        time.sleep(0.2)
    return {m["id"]: m for m in models}


def test_a_call_naming_a_model_is_scored_only_by_that_models_workers(
        two_models: tuple[GatewayProcess, Settings, Path], tiny_model_dir: Path) -> None:
    import redis

    from rerankq import registry

    gateway, settings, other = two_models
    client = redis.Redis.from_url(settings.redis_url)
    names = {w["model"]: w["name"] for w in registry.live_workers(client, settings)}
    client.close()
    with httpx.Client(base_url=gateway.url, timeout=120) as http:
        models = live_models(http, 2)
        assert {k: m["default"] for k, m in models.items()} == {str(tiny_model_dir): True, str(other): False}
        named = [http.post("/v1/jobs", json={"model": "tiny-b", "query": {"text": f"q{i}"},
                                             "documents": [{"text": "d"}]}).json()["job_id"] for i in range(6)]
        plain = [http.post("/v1/jobs", json={"query": {"text": f"q{i}"}, "documents": [{"text": "d"}]}).json()[
            "job_id"] for i in range(6)]
        sync = http.post("/v2/rerank", json={"model": str(other), "query": "q", "documents": ["d"]}).json()["id"]
        workers = {}
        for job_id in [*named, *plain, sync]:
            while (status := http.get(f"/v1/jobs/{job_id}").json())["state"] in ("queued", "running"):
                time.sleep(0.05)
            assert status["state"] == "succeeded"
            workers[job_id] = status["worker"]
    assert {workers[j] for j in [*named, sync]} == {names[str(other)]}
    assert {workers[j] for j in plain} == {names[str(tiny_model_dir)]}


def test_refuses_to_listen_beyond_loopback_without_keys(queue_worker: WorkerProcess) -> None:
    import subprocess
    import sys

    env = {k: v for k, v in queue_worker.env.items() if k != "RERANKQ_API_KEYS"}
    run = subprocess.run([sys.executable, "-m", "rerankq.cli", "gateway", "--host", "0.0.0.0", "--port", "1"],
                         env=env, capture_output=True, text=True, timeout=60)
    assert run.returncode != 0
    assert "refusing to listen on 0.0.0.0 without API keys" in run.stderr


def test_openapi_describes_the_api_and_the_key(gateway: GatewayProcess) -> None:
    schema = httpx.get(f"{gateway.url}/openapi.json", timeout=10).json()  # open: a browser cannot send a key
    assert {"/v2/rerank", "/v1/rerank", "/rerank", "/v1/jobs", "/v1/jobs/{job_id}/events", "/v1/media",
            "/v1/models"} <= set(schema["paths"])
    assert schema["components"]["securitySchemes"]["bearer"]["scheme"] == "bearer"
    assert "swagger" in httpx.get(f"{gateway.url}/docs", timeout=10).text.lower()


def test_cors_allows_only_the_configured_origins(idle_gateway: GatewayProcess, gateway: GatewayProcess) -> None:
    preflight = {"Access-Control-Request-Method": "POST", "Access-Control-Request-Headers": "authorization"}
    allowed = httpx.options(f"{idle_gateway.url}/v2/rerank", headers={"Origin": "https://app.example", **preflight})
    assert allowed.headers["access-control-allow-origin"] == "https://app.example"
    other = httpx.options(f"{idle_gateway.url}/v2/rerank", headers={"Origin": "https://evil.example", **preflight})
    assert "access-control-allow-origin" not in other.headers
    unset = httpx.options(f"{gateway.url}/v2/rerank", headers={"Origin": "https://app.example", **preflight})
    assert "access-control-allow-origin" not in unset.headers  # no origins set: same origin only
