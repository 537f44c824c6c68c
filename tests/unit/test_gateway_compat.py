"""Pure parts of the gateway: request shapes → jobs, responses, type sniffing, model queues."""

from __future__ import annotations

import base64

import pytest

from rerankq import keys
from rerankq.client.dialects import job_sides, to_job, to_response
from rerankq.client.gateway.media import decode_data_uri, sniff
from rerankq.client.gateway.metrics import route_label
from rerankq.errors import InvalidRequest
from rerankq.settings import Settings


def store(uri: str) -> str:
    return "s3://uploads/" + str(len(uri))


def test_cohere_v2_strings() -> None:
    job = to_job({"model": "m", "query": "q", "documents": ["a", "b"], "top_n": 1, "max_tokens_per_doc": 512}, store)
    assert job == {"model": "m", "top_n": 1, "max_tokens_per_doc": 512, "query": {"text": "q"},
                   "documents": [{"text": "a"}, {"text": "b"}]}


def test_cohere_v1_objects_and_rank_fields() -> None:
    body = {"query": "q", "documents": [{"title": "T", "text": "x", "id": 3}], "rank_fields": ["title", "text"],
            "return_documents": True, "top_n": None}
    assert to_job(body, store)["documents"] == [{"text": "title: T\ntext: x"}]
    assert to_job({"query": "q", "documents": [{"text": "x", "id": 3}]}, store)["documents"] == [{"text": "x"}]


def test_vllm_content_lists_and_data_uris() -> None:
    uri = "data:image/png;base64," + base64.b64encode(b"\x89PNG\r\n\x1a\nxx").decode()
    body = {"query": {"content": [{"type": "text", "text": "a "}, {"type": "text", "text": "cat"}]},
            "documents": [{"content": [{"type": "image_url", "image_url": {"url": uri}}]},
                          {"content": [{"type": "video_url", "video_url": {"url": "s3://b/v.mp4"}},
                                       {"type": "text", "text": "clip"}]}]}
    job = to_job(body, store)
    assert job["query"] == {"text": "a cat"}
    assert job["documents"] == [{"image": store(uri)}, {"video": "s3://b/v.mp4", "text": "clip"}]
    single = to_job({"query": "q", "documents": {"content": [{"type": "text", "text": "x"},
                                                             {"type": "image_url", "image_url": "s3://b/i.png"}]}},
                    store)
    assert single["documents"] == [{"text": "x"}, {"image": "s3://b/i.png"}]


def test_unknown_fields_and_bad_parts_name_the_field() -> None:
    with pytest.raises(InvalidRequest, match=r"^temperature: unknown field"):
        to_job({"query": "q", "documents": ["d"], "temperature": 0}, store)
    with pytest.raises(InvalidRequest, match=r"^documents\[0\]\.content\[0\]: "):
        to_job({"query": "q", "documents": [{"content": [{"type": "audio"}]}]}, store)
    with pytest.raises(InvalidRequest, match=r"^documents: "):
        to_job({"query": "q"}, store)


def test_job_sides_keeps_other_fields_for_the_schema_to_judge() -> None:
    job = job_sides({"query": "q", "documents": ["a", {"text": "b", "typo": 1}], "deadline_s": 5}, store)
    assert job == {"query": {"text": "q"}, "documents": [{"text": "a"}, {"text": "b", "typo": 1}], "deadline_s": 5}


def test_response_is_the_union_of_the_apis() -> None:
    result = {"job_id": "j", "model": "M", "results": [{"index": 1, "relevance_score": 0.9}],
              "errors": [{"index": 0, "error": "gone"}], "usage": {"pairs": 2, "tokens": 40}}
    body = {"documents": ["a", {"text": "b", "id": 7}]}
    out = to_response(result, body, "1", True, None)
    assert out["id"] == "j" and out["model"] == "M"
    assert out["results"] == [{"index": 1, "relevance_score": 0.9, "document": {"text": "b", "id": 7}}]
    assert out["usage"]["total_tokens"] == 40 and out["meta"]["api_version"] == {"version": "1"}
    assert to_response(result, body, "2", False, "m")["results"] == [{"index": 1, "relevance_score": 0.9}]


@pytest.mark.parametrize(("head", "mime"), [
    (b"\x89PNG\r\n\x1a\n", "image/png"), (b"\xff\xd8\xff\xe0", "image/jpeg"), (b"GIF89a", "image/gif"),
    (b"RIFF\0\0\0\0WEBPVP8 ", "image/webp"), (b"\0\0\0\x18ftypisom", "video/mp4"),
    (b"\0\0\0\x14ftypqt  ", "video/quicktime"), (b"\x1aE\xdf\xa3", "video/webm")])
def test_sniff_from_bytes(head: bytes, mime: str) -> None:
    assert sniff(head + b"\0" * 16)[0] == mime


def test_sniff_refuses_what_is_not_media() -> None:
    with pytest.raises(InvalidRequest, match="judged by its bytes"):
        sniff(b"<html>not an image</html>")
    with pytest.raises(InvalidRequest, match=r"over the limit 3 \(gateway.max_upload_bytes\)"):
        decode_data_uri("data:image/png;base64," + base64.b64encode(b"123456789").decode(), 3)


def test_route_labels_are_bounded() -> None:
    assert route_label("/v1/jobs/abc/events") == "/v1/jobs/{id}/events"
    assert route_label("/v1/jobs/abc") == "/v1/jobs/{id}"
    assert route_label("/static/app.js") == "/static"
    assert route_label("/wp-admin") == "other"


def test_models_have_their_own_queues_and_the_default_keeps_todays() -> None:
    settings = Settings(model="Qwen/Qwen3-VL-Reranker-2B", queue_prefix="p")
    assert keys.job_queue(settings, {"priority": "high"}) == "p.high"
    assert keys.job_queue(settings, {"priority": "low", "model": "Qwen/Qwen3-VL-Reranker-2B"}) == "p.low"
    eight = keys.job_queue(settings, {"priority": "high", "model": "Qwen/Qwen3-VL-Reranker-8B"})
    assert eight.startswith("p.m.qwen-qwen3-vl-reranker-8b-") and eight.endswith(".high")
    assert keys.model_queue_names(settings, "Qwen/Qwen3-VL-Reranker-2B") == ["p.high", "p.normal", "p.low"]
    assert keys.model_queue_names(settings, "Qwen/Qwen3-VL-Reranker-8B")[0] == eight
    unset = Settings(queue_prefix="p")  # RERANKQ_MODEL not set: one model per Redis, today's queues for all
    assert keys.model_queue_names(unset, "/models/x") == ["p.high", "p.normal", "p.low"]
    assert keys.job_queue(unset, {"priority": "normal", "model": "/models/x"}) == "p.normal"
