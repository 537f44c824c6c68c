"""What a model serves (``rerankq.capabilities``) and the submit-time refusal from the live workers' registry
entries (``rerankq.registry.job_refusal``): the rules the SDK, the gateway and the engine share."""

from __future__ import annotations

from typing import Any

import pytest

from rerankq.capabilities import ALL_MODALITIES, Capabilities, refusal, side_modalities
from rerankq.registry import capabilities_of, job_refusal
from rerankq.settings import Settings

TEXT = Capabilities(task="rerank", max_length=512)
VISUAL = Capabilities(task="rerank", query=ALL_MODALITIES, documents=ALL_MODALITIES, max_length=10240,
                      instruction="find it", image_min_tokens=4, image_max_tokens=1800, max_frames=64)
IMAGE_JOB: dict[str, Any] = {"query": {"text": "a cat"}, "documents": [{"text": "x"}, {"image": "s3://b/cat.png"}]}


def worker(model: str, caps: Capabilities | None) -> dict[str, Any]:
    return {"name": f"w-{model}", "model": model, **({"capabilities": caps.to_json()} if caps else {})}


def test_the_json_round_trip_keeps_everything() -> None:
    for caps in (TEXT, VISUAL, Capabilities(task="embed", documents=ALL_MODALITIES, embedding_dim=2048)):
        assert Capabilities.from_json(caps.to_json()) == caps
    with pytest.raises(ValueError, match=r"unknown modalities.*audio"):
        Capabilities(query=frozenset({"text", "audio"}))


def test_sides_are_read_in_every_shape_a_job_gives() -> None:
    assert side_modalities("a cat") == {"text"}
    assert side_modalities({"text": "a", "image": ["s3://b/x.png"], "video": None}) == {"text", "image"}
    assert side_modalities({"text": "a", "image": []}) == {"text"}


def test_a_refusal_names_the_field_the_model_and_what_it_reads() -> None:
    field, why = refusal("bge", TEXT, "rerank", IMAGE_JOB["query"], IMAGE_JOB["documents"]) or ("", "")
    assert field == "documents[1]"
    assert why == ("model 'bge' reads text documents only (rerank: query text, documents text); this document "
                   "holds image")
    assert refusal("qwen-like", VISUAL, "rerank", IMAGE_JOB["query"], IMAGE_JOB["documents"]) is None
    assert refusal("bge", TEXT, "rerank", {"video": "s3://b/c.mp4"}, [])[0] == "query"  # type: ignore[index]
    assert refusal("bge", TEXT, "embed", {"text": "a"}, [])[0] == "task"  # type: ignore[index]


def test_submit_refuses_only_when_every_live_worker_of_the_model_refuses() -> None:
    one_model = Settings(_env_file=None)  # type: ignore[call-arg]  # RERANKQ_MODEL unset: one model per Redis
    assert job_refusal([], one_model, IMAGE_JOB) is None  # nobody live: the job may wait for a worker
    assert job_refusal([worker("bge", TEXT)], one_model, IMAGE_JOB) == (
        "documents[1]", "model 'bge' reads text documents only (rerank: query text, documents text); this "
        "document holds image")
    assert job_refusal([worker("bge", TEXT), worker("bge", VISUAL)], one_model, IMAGE_JOB) is None
    assert job_refusal([worker("bge", TEXT), worker("old", None)], one_model, IMAGE_JOB) is None  # says nothing
    assert job_refusal([worker("bge", TEXT)], one_model, {**IMAGE_JOB, "documents": ["x"]}) is None
    several = Settings(_env_file=None, model="qwen")  # type: ignore[call-arg]  # models with queues of their own
    live = [worker("qwen", VISUAL), worker("bge", TEXT)]
    assert job_refusal(live, several, IMAGE_JOB) is None  # the default model (qwen) reads images
    assert job_refusal(live, several, {**IMAGE_JOB, "model": "bge"})[0] == "documents[1]"  # type: ignore[index]
    assert capabilities_of({"capabilities": "{not json"}) is None
