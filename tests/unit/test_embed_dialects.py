"""Pure parts of the embedding API: OpenAI and Cohere request shapes → embedding jobs, their responses, and the
``.npy`` files of a batch's results part."""

from __future__ import annotations

import base64
import io
import json

import numpy as np
import pytest

from rerankq.client.batches.vectors import npy_bytes, part_files
from rerankq.client.dialects import job_sides
from rerankq.client.embed_dialects import cohere_to_job, openai_to_job, to_cohere, to_openai
from rerankq.errors import InvalidRequest
from rerankq.schema import parse_job
from rerankq.settings import Settings


def store(uri: str) -> str:
    return "s3://uploads/" + str(len(uri))


def test_openai_inputs_in_every_shape() -> None:
    assert openai_to_job({"model": "m", "input": "a", "user": "u"}, store) == {
        "model": "m", "task": "embed", "inputs": [{"text": "a"}]}
    job = openai_to_job({"input": ["a", {"image": "s3://b/k.png", "text": "t"},
                                   {"type": "image_url", "image_url": {"url": "data:image/png;base64,AAAA"}},
                                   {"content": [{"type": "text", "text": "x"}, {"type": "video_url",
                                                                                "video_url": {"url": "s3://b/v"}}]}],
                         "dimensions": 8, "encoding_format": "base64", "instruction": "i"}, store)
    assert job["inputs"] == [{"text": "a"}, {"image": "s3://b/k.png", "text": "t"}, {"image": "s3://uploads/26"},
                             {"video": "s3://b/v", "text": "x"}]
    assert (job["dimensions"], job["encoding_format"], job["instruction"]) == (8, "base64", "i")
    assert parse_job(job, Settings()).wire()["task"] == "embed"


@pytest.mark.parametrize(("body", "field"), [
    ({"input": [1, 2]}, "input[0]"), ({"input": [[1, 2]]}, "input[0]"), ({"inputs": ["a"]}, "inputs"),
    ({"model": "m"}, "input"), ({"input": {"text": "a"}}, "input"), ({"input": [{"audio": "x"}]}, "input[0]"),
])
def test_openai_refusals_name_the_field(body: dict[str, object], field: str) -> None:
    with pytest.raises(InvalidRequest) as caught:
        openai_to_job(body, store)
    assert caught.value.field == field


def test_openai_response_leaves_failed_inputs_out() -> None:
    result = {"job_id": "j", "model": "spec", "embeddings": [[0.5], None, [0.25]], "errors": [{"index": 1,
              "error": "gone"}], "usage": {"tokens": 7}}
    response = to_openai(result, None)
    assert [(d["index"], d["embedding"]) for d in response["data"]] == [(0, [0.5]), (2, [0.25])]
    assert response["usage"] == {"prompt_tokens": 7, "total_tokens": 7} and response["model"] == "spec"
    assert response["errors"] == result["errors"]


def test_cohere_shapes_types_and_refusals() -> None:
    job = cohere_to_job({"model": "m", "texts": ["a"], "input_type": "search_query", "output_dimension": 4,
                         "truncate": "END", "priority": 3, "embedding_types": ["base64"]}, store)
    assert job == {"model": "m", "task": "embed", "inputs": [{"text": "a"}], "encoding_format": "float",
                   "dimensions": 4}
    assert cohere_to_job({"images": ["data:image/png;base64,AA"]}, store)["inputs"] == [{"image": "s3://uploads/24"}]
    inputs = cohere_to_job({"inputs": [{"content": [{"type": "text", "text": "t"}]}]}, store)["inputs"]
    assert inputs == [{"text": "t"}]
    for body, field, words in [({"texts": ["a"], "embedding_types": ["float", "int8"]}, "embedding_types", "int8"),
                               ({"texts": ["a"], "images": ["x"]}, "images", "exactly one"),
                               ({}, "texts", "exactly one"), ({"texts": [3]}, "texts[0]", "a string")]:
        with pytest.raises(InvalidRequest, match=words) as caught:
            cohere_to_job(body, store)
        assert caught.value.field == field
    body = {"texts": ["a", "b"], "embedding_types": ["float", "base64"]}
    response = to_cohere({"job_id": "j", "embeddings": [[1.0, 2.0], None], "errors": [{"index": 1, "error": "x"}],
                          "usage": {"tokens": 3}}, body)
    assert response["embeddings"]["float"] == [[1.0, 2.0], None]
    assert np.frombuffer(base64.b64decode(response["embeddings"]["base64"][0]), "<f4").tolist() == [
        1.0, 2.0]
    assert response["embeddings"]["base64"][1] is None and response["texts"] == ["a", "b"]
    assert response["response_type"] == "embeddings_by_type" and response["meta"]["billed_units"]["input_tokens"] == 3


def test_job_sides_translates_embedding_inputs() -> None:
    job = job_sides({"task": "embed", "inputs": ["a", {"image": "data:image/png;base64,AA"}]}, store)
    assert job["inputs"] == [{"text": "a"}, {"image": "s3://uploads/24"}]


def test_npy_files_and_index() -> None:
    rows = [[1.0, 2.0, 3.0], [4.0, 5.0, 6.0]]
    assert np.load(io.BytesIO(npy_bytes(rows, 3))).tolist() == rows
    lines = [{"task": "embed", "custom_id": "a", "line": 4, "dimensions": 2, "embeddings": [[1.0, 2.0], None]},
             {"custom_id": "r", "line": 5, "scores": [0.5]},
             {"task": "embed", "custom_id": "b", "line": 6, "dimensions": 2,
              "embeddings": ["AACAPwAAAEA="]},  # base64 float32 [1, 2]
             {"task": "embed", "custom_id": "c", "line": 7, "dimensions": 1, "embeddings": [[9.0]]}]
    files, index = part_files(lines, "part-00003")
    first = np.load(io.BytesIO(files["part-00003.npy"]))
    assert first.dtype == np.float32 and first.shape == (3, 2) and np.isnan(first[1]).all()
    assert first[[0, 2]].tolist() == [[1.0, 2.0], [1.0, 2.0]]
    assert np.load(io.BytesIO(files["part-00003-d1.npy"])).tolist() == [[9.0]]
    assert [json.loads(line) for line in index.splitlines()] == [
        {"custom_id": "a", "line": 4, "file": "part-00003.npy", "row": 0, "rows": 2},
        {"custom_id": "b", "line": 6, "file": "part-00003.npy", "row": 2, "rows": 1},
        {"custom_id": "c", "line": 7, "file": "part-00003-d1.npy", "row": 0, "rows": 1}]
    assert part_files([lines[1]], "part-00000") == ({}, "")
