"""OpenAI (``/v1/embeddings``) and Cohere v2 (``/v2/embed``) embedding requests → a rerankq embedding job, and
the job's result → their responses.

OpenAI: ``input`` is a string, a list of strings, or a list of multimodal objects, each a rerankq side
``{"text", "image", "video"}``, vLLM's ``{"content": [parts]}``, or one content part (``{"type": "text", "text"}``,
``{"type": "image_url", "image_url": {"url"}}``, ``{"type": "video_url", …}``); ``model``, ``dimensions``,
``encoding_format`` (``float`` or ``base64``: little-endian float32, as OpenAI's SDK decodes it); ``user`` is
ignored. Token-id inputs (lists of integers) are refused: rerankq tokenizes itself.

Cohere v2: one of ``texts``, ``images`` (data URIs or references) or ``inputs`` (``{"content": [parts]}``);
``embedding_types`` of ``float`` and ``base64`` (the others are refused); ``output_dimension`` (→
``dimensions``); ``input_type``, ``truncate``, ``max_tokens`` and ``priority`` are accepted and ignored (the model
embeds queries and documents alike unless the request gives an ``instruction``).

Both answers carry rerankq's ``errors`` (``[{"index", "error"}]``) for inputs whose media could not be read:
OpenAI's ``data`` leaves them out (each item keeps its ``index``); Cohere's lists hold ``null`` in their place.
"""

from __future__ import annotations

import base64
import struct
from typing import Any

from rerankq.client.dialects import Store, content_side, to_side
from rerankq.errors import InvalidRequest

# rerankq's own job fields a compatible call may add.
JOB_FIELDS = ("instruction", "fps", "max_frames", "job_id", "priority", "result_uri", "model", "deadline_s",
              "expires_at")
OPENAI_IGNORED = ("user",)
COHERE_IGNORED = ("input_type", "truncate", "max_tokens", "priority")
COHERE_TYPES = ("float", "base64")
_PART_TYPES = ("text", "image_url", "video_url", "input_image")


def _unknown(body: dict[str, Any], known: set[str]) -> None:
    unknown = sorted(set(body) - known)
    if unknown:
        raise InvalidRequest(f"unknown field (allowed: {', '.join(sorted(known))})", unknown[0])


def _input(value: Any, store: Store, field: str) -> dict[str, Any]:
    """One input in any accepted shape → a rerankq side."""
    if isinstance(value, dict) and value.get("type") in _PART_TYPES:
        return content_side([value], store, field)
    if isinstance(value, int) or (isinstance(value, list) and all(isinstance(v, int) for v in value)):
        raise InvalidRequest("token ids are not accepted: send the text", field)
    return to_side(value, store, field)


def openai_to_job(body: Any, store: Store) -> dict[str, Any]:
    """An OpenAI embeddings request → an embedding job (validated later by ``rerankq.schema.parse_job``)."""
    if not isinstance(body, dict):
        raise InvalidRequest("the request is a JSON object")
    _unknown(body, {"input", "dimensions", "encoding_format", *JOB_FIELDS, *OPENAI_IGNORED})
    if "input" not in body:
        raise InvalidRequest("field required", "input")
    given = body["input"]
    if isinstance(given, str) or (isinstance(given, list) and given and all(isinstance(v, int) for v in given)):
        given = [given]
    if not isinstance(given, list):
        raise InvalidRequest("a string or a list of inputs", "input")
    job = {k: body[k] for k in (*JOB_FIELDS, "dimensions", "encoding_format") if body.get(k) is not None}
    job["task"] = "embed"
    job["inputs"] = [_input(v, store, f"input[{i}]") for i, v in enumerate(given)]
    return job


def to_openai(result: dict[str, Any], requested_model: str | None) -> dict[str, Any]:
    """An embedding job's result → OpenAI's response, plus ``errors``."""
    tokens = int(result.get("usage", {}).get("tokens", 0))
    data = [{"object": "embedding", "index": i, "embedding": vector}
            for i, vector in enumerate(result["embeddings"]) if vector is not None]
    return {"object": "list", "data": data, "model": requested_model or result.get("model"),
            "usage": {"prompt_tokens": tokens, "total_tokens": tokens}, "errors": result.get("errors", []),
            "id": result["job_id"]}


def cohere_types(body: dict[str, Any]) -> list[str]:
    """The embedding types a Cohere request asks for (``float`` when it names none); others are refused."""
    types = body.get("embedding_types") or ["float"]
    if not isinstance(types, list) or any(t not in COHERE_TYPES for t in types):
        refused = [t for t in types if t not in COHERE_TYPES] if isinstance(types, list) else types
        raise InvalidRequest(f"{refused} not supported: rerankq returns {' and '.join(COHERE_TYPES)} embeddings",
                             "embedding_types")
    return list(dict.fromkeys(types))


def cohere_to_job(body: Any, store: Store) -> dict[str, Any]:
    """A Cohere v2 embed request → an embedding job (floats: ``to_cohere`` encodes what was asked)."""
    if not isinstance(body, dict):
        raise InvalidRequest("the request is a JSON object")
    _unknown(body, {"texts", "images", "inputs", "embedding_types", "output_dimension", *JOB_FIELDS,
                    *COHERE_IGNORED})
    given = [name for name in ("texts", "images", "inputs") if body.get(name) is not None]
    if len(given) != 1:
        raise InvalidRequest("exactly one of texts, images, inputs is required", given[1] if given else "texts")
    name = given[0]
    items = body[name]
    if not isinstance(items, list):
        raise InvalidRequest("a list", name)
    if name == "texts":
        inputs = [{"text": t} for t in _strings(items, name)]
    elif name == "images":
        inputs = [content_side([{"type": "image_url", "image_url": {"url": u}}], store, f"images[{i}]")
                  for i, u in enumerate(_strings(items, name))]
    else:
        inputs = [_input(v, store, f"inputs[{i}]") for i, v in enumerate(items)]
    cohere_types(body)
    job = {k: body[k] for k in JOB_FIELDS if body.get(k) is not None and k != "priority"}
    job.update(task="embed", inputs=inputs, encoding_format="float")
    if body.get("output_dimension") is not None:
        job["dimensions"] = body["output_dimension"]
    return job


def _strings(items: list[Any], name: str) -> list[str]:
    for i, item in enumerate(items):
        if not isinstance(item, str):
            raise InvalidRequest("a string", f"{name}[{i}]")
    return items


def float32_base64(vector: list[float]) -> str:
    """A vector as base64 of its little-endian float32 bytes."""
    return base64.b64encode(struct.pack(f"<{len(vector)}f", *vector)).decode()


def to_cohere(result: dict[str, Any], body: dict[str, Any]) -> dict[str, Any]:
    """An embedding job's result (floats) → Cohere v2's ``embeddings_by_type`` response, plus ``errors``."""
    types = cohere_types(body)
    vectors: list[list[float] | None] = result["embeddings"]
    embeddings: dict[str, Any] = {}
    if "float" in types:
        embeddings["float"] = vectors
    if "base64" in types:
        embeddings["base64"] = [None if v is None else float32_base64(v) for v in vectors]
    tokens = int(result.get("usage", {}).get("tokens", 0))
    texts = [t for t in body.get("texts") or [] if isinstance(t, str)]
    return {"id": result["job_id"], "response_type": "embeddings_by_type", "embeddings": embeddings, "texts": texts,
            "meta": {"api_version": {"version": "2"}, "billed_units": {"input_tokens": tokens}},
            "errors": result.get("errors", [])}
