"""The job schema: what is accepted, and what is rejected with which field and limit."""

from __future__ import annotations

from typing import Any

import pytest

from rerankq.errors import InvalidRequest
from rerankq.schema import parse_job
from rerankq.settings import LimitSettings, Settings

OK = {"query": {"text": "q"}, "documents": [{"text": "d"}]}


def rejected(data: Any, settings: Settings | None = None) -> InvalidRequest:
    with pytest.raises(InvalidRequest) as err:
        parse_job(data, settings)
    return err.value


def test_full_job_round_trips_to_the_wire() -> None:
    job = {"instruction": "Find it.", "query": {"text": "q", "image": "s3://b/q.jpg"},
           "documents": [{"text": "t"}, {"image": ["s3://b/1.png", "s3://b/2.png"]}, {"video": "s3://b/v.mp4"},
                         {"video": ["s3://b/f1.png", "s3://b/f2.png"]}, {"image": "file:///tmp/x.png"},
                         {"image": "https://example.com/x.png"}],
           "fps": 2.0, "max_frames": 32, "top_n": 3, "job_id": "client-42", "priority": "high",
           "result_uri": "s3://results/rerank/"}
    assert parse_job(job).wire() == job


def test_defaults_are_filled_and_nones_left_out() -> None:
    assert parse_job(OK).wire() == {**OK, "priority": "normal"}


@pytest.mark.parametrize(("data", "field", "words"), [
    ({**OK, "colour": "red"}, "colour", "unknown field (allowed: instruction, query, documents, fps, max_frames, "
                                        "top_n, max_tokens_per_doc, recall, task, job_id, priority, result_uri"),
    ({"query": {"text": "q"}, "documents": [{"text": "d", "audio": "a"}]}, "documents[0].audio",
     "unknown field (allowed: text, image, video)"),
    ({"query": {"text": "q", "colour": 1}, "documents": ["d"]}, "query.colour", "(allowed: text, image, video)"),
    ({"query": 5, "documents": ["d"]}, "query", "expected a string, or an object with any of text, image, video"),
    ({"query": "q", "documents": [["d"]]}, "documents[0]", "expected a string, or an object with any of text"),
    ({"query": "q", "documents": ["d"], "fps": {}}, "fps", "number"),
    ({"query": {"image": 5}, "documents": ["d"]}, "query.image", "expected a reference string or a list of them"),
    ({"query": {"text": "q"}}, "documents", "required"),
    ({"query": {"text": "q"}, "documents": []}, "documents", "at least 1"),
    ({"query": {}, "documents": [{"text": "d"}]}, "query", "at least one of text, image, video"),
    ({"query": {"text": "q"}, "documents": [{}]}, "documents[0]", "at least one of"),
    ({"query": {"text": 3}, "documents": [{"text": "d"}]}, "query.text", "string"),
    ({"query": {"text": "q"}, "documents": [{"image": "http://x/y.png"}]}, "documents[0].image", "s3://"),
    ({"query": {"text": "q"}, "documents": [{"image": "s3://bucket-only"}]}, "documents[0].image", "bucket/key"),
    ({"query": {"text": "q"}, "documents": [{"image": []}]}, "documents[0].image", "empty"),
    ({**OK, "priority": "urgent"}, "priority", "high"),
    ({**OK, "top_n": 0}, "top_n", "greater than or equal to 1"),
    ({**OK, "fps": 0}, "fps", "greater than 0"),
    ({**OK, "job_id": "has space"}, "job_id", "pattern"),
    ({**OK, "result_uri": "/tmp/out"}, "result_uri", "s3://"),
])
def test_bad_jobs_name_the_field(data: dict[str, Any], field: str, words: str) -> None:
    err = rejected(data)
    assert err.field == field
    assert words in str(err)


def test_limits_come_from_settings_and_are_named() -> None:
    settings = Settings(limits=LimitSettings(max_documents=3, max_text_chars=10, max_images_per_side=1,
                                             max_frames_per_list=2, max_frames=8))
    cases = [
        ({"query": {"text": "q"}, "documents": [{"text": "d"}] * 4}, "documents", "limits.max_documents"),
        ({"query": {"text": "q" * 11}, "documents": [{"text": "d"}]}, "query.text", "limits.max_text_chars"),
        ({**OK, "instruction": "i" * 11}, "instruction", "limits.max_text_chars"),
        ({"query": {"image": ["s3://b/1", "s3://b/2"]}, "documents": [{"text": "d"}]}, "query.image",
         "limits.max_images_per_side"),
        ({"query": {"text": "q"}, "documents": [{"video": ["s3://b/1", "s3://b/2", "s3://b/3"]}]},
         "documents[0].video", "limits.max_frames_per_list"),
        ({**OK, "max_frames": 9}, "max_frames", "limits.max_frames"),
    ]
    for data, field, limit in cases:
        err = rejected(data, settings)
        variable = "RERANKQ_" + limit.replace(".", "__").upper()  # named both ways: users set the variable
        assert (err.field, f"({limit}, {variable})" in str(err)) == (field, True), str(err)
    assert str(rejected(cases[0][0], settings)) == ("documents: 4 documents, over the limit 3 (limits.max_documents, "
                                                    "RERANKQ_LIMITS__MAX_DOCUMENTS)")


def test_not_an_object() -> None:
    assert "JSON object" in str(rejected(["not", "a", "job"]))


def test_several_problems_are_counted() -> None:
    err = rejected({"query": {}, "documents": [], "colour": 1})
    assert "more problems" in str(err)


@pytest.mark.parametrize("data", [{"query": 5, "documents": [{"text": "d"}, 7]}, {"query": ["q"], "documents": 3},
                                  {"query": {"text": None, "x": 1}, "documents": [None]}])
def test_messages_never_name_internal_classes(data: dict[str, Any]) -> None:
    message = str(rejected(data))
    assert "SideSpec" not in message and "RerankJob" not in message and "SPEC" not in message, message


def test_shorthand_strings_are_text_sides() -> None:
    """Cohere / vLLM callers write the query and documents as strings."""
    job = parse_job({"query": "a cat", "documents": ["a dog", {"image": "s3://b/cat.png"}, "a cat"]})
    assert job.wire() == {"query": {"text": "a cat"}, "documents": [{"text": "a dog"}, {"image": "s3://b/cat.png"},
                                                                    {"text": "a cat"}], "priority": "normal"}


def test_shorthand_strings_obey_the_text_limit() -> None:
    err = rejected({"query": "q", "documents": ["d" * 11]}, Settings(limits=LimitSettings(max_text_chars=10)))
    assert err.field == "documents[0].text"


def test_an_embedding_job_takes_inputs_in_shorthand_and_its_own_fields() -> None:
    job = parse_job({"task": "embed", "inputs": ["a", {"image": "s3://b/x.png"}], "dimensions": 256,
                     "encoding_format": "base64", "instruction": "Find it."})
    assert job.wire() == {"task": "embed", "inputs": [{"text": "a"}, {"image": "s3://b/x.png"}], "dimensions": 256,
                          "encoding_format": "base64", "instruction": "Find it.", "priority": "normal"}
    assert job.units == 2


@pytest.mark.parametrize(("data", "field", "words"), [
    ({"task": "embed", "inputs": ["a"] * 3}, "inputs", "3 inputs, over the limit 2 (limits.max_documents"),
    ({"task": "embed", "inputs": ["a"], "query": "q"}, "query", "allowed: task, inputs, instruction, dimensions"),
    ({"task": "embed", "documents": ["a"]}, "inputs", "Field required (and 1 more problem)"),
    ({"task": "rank", "inputs": ["a"]}, "task", "'rank' is not one of rerank, embed"),
    ({**OK, "recall": {"model": "m"}}, "recall.top_k", "Field required"),
    ({**OK, "recall": {"model": "m", "top_k": 2, "k": 1}}, "recall.k", "allowed: model, top_k"),
])
def test_bad_embedding_and_recall_fields_are_named(data: dict[str, Any], field: str, words: str) -> None:
    err = rejected(data, Settings(limits=LimitSettings(max_documents=2)))
    assert err.field == field
    assert words in str(err), str(err)
