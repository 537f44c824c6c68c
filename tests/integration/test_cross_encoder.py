"""A text cross-encoder family (bge-reranker-v2-m3's ``XLMRobertaForSequenceClassification``), on a tiny random
checkpoint built offline: its scores are ``transformers``' own forward of the same checkpoint (sigmoid of the
logit), in process and through a real worker; what it cannot read is refused, naming the model, before any
fetch; a bare encoder checkpoint (bge-m3's ``XLMRobertaModel``) is refused at load."""

from __future__ import annotations

import json
import subprocess
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import torch

from rerankq.cli.cluster import RedisServer, S3Server, stop_process
from rerankq.client import RerankClient
from rerankq.errors import InvalidRequest, ModelLoadError
from rerankq.models.inprocess import Reranker
from rerankq.models.loading import load_model, write_tiny_model
from rerankq.schema import parse_job
from tests.integration.conftest import RESULTS_BUCKET, WorkerProcess, start_gateway, start_worker, stop_worker

LONG = " ".join(f"word{i} the quick brown fox" for i in range(400))  # far over 512 tokens: truncated
DOCUMENTS = ["paris is the capital of france", "a red car parked outside", LONG, "le chat", "berlin"]


@pytest.fixture(scope="module")
def xlmr_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The tiny cross-encoder, written by ``rerankq tiny-model --family xlmr-reranker`` (as a user would)."""
    out = tmp_path_factory.mktemp("xlmr")
    done = subprocess.run([sys.executable, "-m", "rerankq.cli", "tiny-model", str(out), "--family", "xlmr-reranker"],
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0 and "xlmr-reranker" in done.stdout, done.stderr
    return out


def test_the_tiny_builder_is_deterministic_and_names_its_families(xlmr_dir: Path, tmp_path: Path) -> None:
    again = write_tiny_model("xlmr-reranker", tmp_path / "again")
    assert (again / "model.safetensors").read_bytes() == (xlmr_dir / "model.safetensors").read_bytes()
    with pytest.raises(ModelLoadError, match="qwen3vl-reranker, xlmr-reranker"):
        write_tiny_model("bert-reranker", tmp_path / "nope")


def reference(path: Path, query: str, documents: list[str], max_length: int = 512) -> list[float]:
    """transformers' own forward of the checkpoint, one pair at a time, as the model card scores."""
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(path)
    model = AutoModelForSequenceClassification.from_pretrained(path, dtype=torch.float32).eval()
    out = []
    with torch.inference_mode():
        for document in documents:
            inputs = tokenizer(query, document, truncation=True, max_length=max_length, return_tensors="pt")
            out.append(torch.sigmoid(model(**inputs).logits.view(-1).float()).item())
    return out


def test_in_process_scores_are_transformers_own(xlmr_dir: Path) -> None:
    expected = reference(xlmr_dir, "what is the capital of france", DOCUMENTS)
    reranker = Reranker(str(xlmr_dir), device="cpu", batch_max_pairs=3)
    got = reranker.process({"query": "what is the capital of france", "documents": DOCUMENTS})
    assert got == pytest.approx(expected, abs=1e-5)
    assert len(set(round(s, 6) for s in expected)) > 1  # the pairs are told apart: the check can fail
    caps = reranker.model.capabilities
    assert (caps.task, caps.max_length, caps.instruction, sorted(caps.documents)) == ("rerank", 512, None, ["text"])
    short = Reranker(str(xlmr_dir), device="cpu", max_length=32)  # the setting overrides the model's default
    assert short.process({"query": "capital", "documents": [LONG]}) == pytest.approx(
        reference(xlmr_dir, "capital", [LONG], max_length=32), abs=1e-5)


def test_an_image_document_is_refused_unfetched_naming_the_model(xlmr_dir: Path, tmp_path: Path) -> None:
    missing = tmp_path / "never-read.png"  # fetching it would fail as "not found"
    reranker = Reranker(str(xlmr_dir), device="cpu")
    scores = reranker.process({"query": "a cat", "documents": ["a cat", {"image": str(missing)}]}, errors="none")
    assert scores[0] is not None and scores[1] is None
    job = reranker.engine.prepare([reranker._job({}, "a cat", [{"image": str(missing)}])]).jobs[0]
    assert "reads text documents only" in job.errors[0] and str(xlmr_dir.name) in job.errors[0]
    assert "never-read" not in job.errors[0]
    assert reranker.resolver.stats.fetches == 0
    with pytest.raises(Exception, match="reads text queries only"):
        reranker.process({"query": {"image": str(missing)}, "documents": ["a cat"]})


def test_a_bare_encoder_checkpoint_is_refused_at_load(tmp_path: Path) -> None:
    config = {"architectures": ["XLMRobertaModel"], "model_type": "xlm-roberta"}
    (tmp_path / "config.json").write_text(json.dumps(config))
    with pytest.raises(ModelLoadError, match=r"XLMRobertaModel.*randomly initialised"):
        load_model(str(tmp_path))
    (tmp_path / "config.json").write_text(json.dumps({"architectures": ["BertForMaskedLM"]}))
    with pytest.raises(ModelLoadError, match=r"BertForMaskedLM.*XLMRobertaForSequenceClassification"):
        load_model(str(tmp_path))


@pytest.fixture(scope="module")
def xlmr_worker(xlmr_dir: Path, redis_server: RedisServer, s3_server: S3Server,
                tmp_path_factory: pytest.TempPathFactory) -> Iterator[WorkerProcess]:
    worker = start_worker(xlmr_dir, redis_server.url, s3_server.url, tmp_path_factory.mktemp("xlmr-worker"),
                          RERANKQ_BATCH__MAX_PAIRS="2")
    yield worker
    stop_worker(worker)


def test_a_worker_scores_as_transformers_and_refuses_images(xlmr_worker: WorkerProcess, xlmr_dir: Path,
                                                             media: dict[str, str]) -> None:
    """The SDK refuses an image for the text model at submit, from the worker's registry entry; a job that
    gets past it anyway (enqueued raw) has the image document refused by the worker, the rest scored."""
    expected = reference(xlmr_dir, "capital", DOCUMENTS)
    job: dict[str, Any] = {"query": "capital", "documents": [*DOCUMENTS, {"image": media["cat.png"]}]}
    with RerankClient(xlmr_worker.settings) as client:
        with pytest.raises(InvalidRequest, match=rf"documents\[{len(DOCUMENTS)}\]: model .*reads text documents"):
            client.submit(job)
        with pytest.raises(InvalidRequest, match=r"query: model .*reads text queries only"):
            client.submit({"query": {"image": media["cat.png"]}, "documents": ["a"]})
        wire = {**parse_job(job, client.settings).wire(), "job_id": uuid.uuid4().hex}
        client.enqueue([wire])
        result = client.result(wire["job_id"], timeout=60)
        text_only = client.result(client.submit({"query": "capital", "documents": DOCUMENTS}), timeout=60)
    assert result["scores"][:-1] == pytest.approx(expected, abs=1e-5)
    assert text_only["scores"] == pytest.approx(expected, abs=1e-5)
    assert result["scores"][-1] is None
    errors = {e["index"]: e["error"] for e in result["errors"]}
    assert list(errors) == [len(DOCUMENTS)] and "reads text documents only" in errors[len(DOCUMENTS)]


def test_the_gateway_refuses_what_the_model_cannot_read(xlmr_worker: WorkerProcess, media: dict[str, str],
                                                        tmp_path_factory: pytest.TempPathFactory) -> None:
    gateway = start_gateway(xlmr_worker.env, tmp_path_factory.mktemp("xlmr-gateway"))
    try:
        models = httpx.get(f"{gateway.url}/v1/models", timeout=10).json()["data"]
        assert [(m["task"], m["reads"]) for m in models] == [("rerank", {"query": ["text"], "documents": ["text"]})]
        refused = httpx.post(f"{gateway.url}/v1/rerank", timeout=30, json={
            "query": "capital", "documents": ["paris", {"image": media["cat.png"]}]})
        assert refused.status_code == 400, refused.text
        assert "documents[1]" in refused.text and "reads text documents only" in refused.text
        served = httpx.post(f"{gateway.url}/v1/rerank", timeout=60, json={"query": "capital",
                                                                           "documents": ["paris", "berlin"]})
        assert served.status_code == 200, served.text
    finally:
        stop_process(gateway.proc)


def test_a_batch_runs_on_the_cross_encoder(xlmr_worker: WorkerProcess, xlmr_dir: Path, s3: Any,
                                          media: dict[str, str]) -> None:
    """A JSONL batch: text lines scored as transformers scores them, a line with an image for the text model
    ends as an error line naming the model."""
    lines = [{"custom_id": "text", "query": "capital", "documents": DOCUMENTS[:2]},
             {"custom_id": "image", "query": "capital", "documents": [{"image": media["cat.png"]}]}]
    s3.put_object(Bucket=RESULTS_BUCKET, Key="xlmr/in.jsonl", Body="".join(json.dumps(x) + "\n" for x in lines))
    with RerankClient(xlmr_worker.settings) as client:
        batch = client.submit_batch(f"s3://{RESULTS_BUCKET}/xlmr/in.jsonl", f"s3://{RESULTS_BUCKET}/xlmr/out/")
        record = client.wait_batch(batch.batch_id, timeout=120)
    assert record.done == 2, record
    found: dict[str, list[dict[str, Any]]] = {"results": [], "errors": []}
    for kind, rows in found.items():
        for obj in s3.list_objects_v2(Bucket=RESULTS_BUCKET, Prefix=f"xlmr/out/{kind}/").get("Contents", []):
            body = s3.get_object(Bucket=RESULTS_BUCKET, Key=obj["Key"])["Body"].read().decode()
            rows += [json.loads(line) for line in body.splitlines() if line]
    by_id = {row["custom_id"]: row for row in found["results"] + found["errors"]}
    assert by_id["text"]["scores"] == pytest.approx(reference(xlmr_dir, "capital", DOCUMENTS[:2]), abs=1e-5)
    assert "reads text documents only" in json.dumps(by_id["image"]), by_id["image"]


def test_the_cli_submits_text_and_refuses_an_image_for_the_text_model(xlmr_worker: WorkerProcess,
                                                                      media: dict[str, str]) -> None:
    def submit(job: dict[str, Any]) -> subprocess.CompletedProcess[str]:
        return subprocess.run([sys.executable, "-m", "rerankq.cli", "submit", "-", "--wait"], input=json.dumps(job),
                              env=xlmr_worker.env, capture_output=True, text=True, timeout=120)

    served = submit({"query": "capital", "documents": ["paris", "berlin"]})
    assert served.returncode == 0, served.stderr
    refused = submit({"query": "capital", "documents": ["paris", {"image": media["cat.png"]}]})
    assert refused.returncode != 0 and "documents[1]" in refused.stderr, refused.stderr
    assert "reads text documents only" in refused.stderr
