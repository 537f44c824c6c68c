"""Cohere (v1, v2), vLLM and Jina rerank requests → a rerankq job, and the job's result → their responses.

One translation for all three routes. Accepted shapes:

- ``query``: a string, a rerankq side ``{"text", "image", "video"}``, or vLLM's ``{"content": [parts]}``.
- ``documents``: a list of strings, rerankq sides, vLLM content objects, or Cohere v1 objects (``text`` plus any
  other fields; with ``rank_fields`` those fields are joined as ``name: value`` lines); or vLLM's single
  ``{"content": [parts]}`` whose every part is one document.
- vLLM content parts: ``{"type": "text", "text"}``, ``{"type": "image_url", "image_url": {"url"}}``,
  ``{"type": "video_url", "video_url": {"url"}}``.
- Media references as in a job (``s3://``, ``https://``), or ``data:`` URIs, which ``store`` turns into
  ``s3://`` references (stored like uploads).

The response is the union of the three APIs' fields: ``id``, ``model``, ``results[{index, relevance_score,
document?}]``, ``meta`` (Cohere), ``usage`` (vLLM / Jina), plus rerankq's ``errors`` for documents whose media
could not be read (they have no score, so they are not in ``results``).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from rerankq.errors import InvalidRequest

# Fields a client may send that rerankq passes to the job as they are.
JOB_FIELDS = ("instruction", "fps", "max_frames", "top_n", "job_id", "priority", "result_uri", "model", "deadline_s",
              "expires_at", "max_tokens_per_doc", "recall")
# Fields other APIs define that do not change rerankq's scores; accepted so their clients work unchanged.
IGNORED_FIELDS = ("max_chunks_per_doc", "truncate_prompt_tokens", "user", "encoding_format", "mm_processor_kwargs")
_SIDE_KEYS = {"text", "image", "video"}
_PART_KINDS = {"image_url": "image", "video_url": "video", "input_image": "image"}

Store = Callable[[str], str]  # data: URI -> s3:// reference


def _media(ref: Any, store: Store, field: str) -> Any:
    if isinstance(ref, list):
        return [_media(r, store, f"{field}[{i}]") for i, r in enumerate(ref)]
    if isinstance(ref, str) and ref.startswith("data:"):
        try:
            return store(ref)
        except InvalidRequest as exc:
            raise InvalidRequest(str(exc), field) from None
    return ref


def _content(parts: Any, store: Store, field: str) -> dict[str, Any]:
    """vLLM's content list → one side (texts joined, images and videos kept)."""
    if not isinstance(parts, list) or not parts:
        raise InvalidRequest("content must be a non-empty list of parts", field)
    texts: list[str] = []
    media: dict[str, list[str]] = {"image": [], "video": []}
    for i, part in enumerate(parts):
        kind = part.get("type") if isinstance(part, dict) else None
        if kind == "text" and isinstance(part.get("text"), str):
            texts.append(part["text"])
        elif kind in _PART_KINDS:
            url = part.get(kind)
            url = url.get("url") if isinstance(url, dict) else url
            media[_PART_KINDS[kind]].append(_media(url, store, f"{field}.content[{i}]"))
        else:
            raise InvalidRequest("a part is {type: text|image_url|video_url, ...}", f"{field}.content[{i}]")
    side: dict[str, Any] = {k: v[0] if len(v) == 1 else v for k, v in media.items() if v}
    if len(media["video"]) > 1:
        raise InvalidRequest("one video per side", field)
    if texts:
        side["text"] = "".join(texts)
    return side


def to_side(value: Any, store: Store, field: str, rank_fields: list[str] | None = None) -> dict[str, Any]:
    """One query or document, in any accepted shape → a rerankq side."""
    if isinstance(value, str):
        return {"text": value}
    if not isinstance(value, dict):
        raise InvalidRequest(f"expected a string or an object, got {type(value).__name__}", field)
    if "content" in value:
        return _content(value["content"], store, field)
    if rank_fields:
        missing = [f for f in rank_fields if f not in value]
        if missing:
            raise InvalidRequest(f"rank_fields {missing} not in the document", field)
        return {"text": "\n".join(f"{f}: {value[f]}" for f in rank_fields)}
    side = {k: _media(v, store, f"{field}.{k}") if k != "text" else v for k, v in value.items() if k in _SIDE_KEYS}
    if not side:
        raise InvalidRequest("needs at least one of text, image, video", field)
    return side


def _documents(body: dict[str, Any], store: Store) -> list[dict[str, Any]]:
    docs = body.get("documents")
    rank_fields = body.get("rank_fields")
    if isinstance(docs, dict) and "content" in docs:  # vLLM: one content list, one document per part
        return [_content([part], store, f"documents.content[{i}]") for i, part in enumerate(docs["content"])]
    if not isinstance(docs, list):
        raise InvalidRequest("a list of documents is required", "documents")
    return [to_side(d, store, f"documents[{i}]", rank_fields) for i, d in enumerate(docs)]


def to_job(body: Any, store: Store) -> dict[str, Any]:
    """A compatible rerank request → a job dict (validated later by ``rerankq.schema.parse_job``)."""
    if not isinstance(body, dict):
        raise InvalidRequest("the request is a JSON object")
    known = {"query", "documents", "rank_fields", "return_documents", *JOB_FIELDS, *IGNORED_FIELDS}
    unknown = sorted(set(body) - known)
    if unknown:
        raise InvalidRequest("unknown field", unknown[0])
    if "query" not in body:
        raise InvalidRequest("field required", "query")
    job = {k: body[k] for k in JOB_FIELDS if body.get(k) is not None}
    job["query"] = to_side(body["query"], store, "query")
    job["documents"] = _documents(body, store)
    return job


def job_sides(body: dict[str, Any], store: Store) -> dict[str, Any]:
    """A rerankq job whose sides may be written as a compatible call writes them (strings, content lists,
    ``data:`` URIs); every other field is kept as sent, for ``parse_job`` to judge."""
    job = dict(body)

    def side(value: Any, field: str) -> Any:
        if isinstance(value, str) or (isinstance(value, dict) and "content" in value):
            return to_side(value, store, field)
        if isinstance(value, dict):
            return {k: _media(v, store, f"{field}.{k}") if k in ("image", "video") else v for k, v in value.items()}
        return value

    if "query" in job:
        job["query"] = side(job["query"], "query")
    if isinstance(job.get("documents"), list):
        job["documents"] = [side(d, f"documents[{i}]") for i, d in enumerate(job["documents"])]
    return job


def echo(original: Any) -> dict[str, Any]:
    """The ``document`` of a result: Cohere's ``{"text"}`` for a string, the object as sent otherwise."""
    return {"text": original} if isinstance(original, str) else original


def originals(body: dict[str, Any]) -> list[Any]:
    docs = body.get("documents")
    if isinstance(docs, dict):
        return [{"content": [part]} for part in docs.get("content", [])]
    return list(docs or [])


def to_response(result: dict[str, Any], body: dict[str, Any], api_version: str, return_documents: bool,
                requested_model: str | None) -> dict[str, Any]:
    """A job's result → the union response of Cohere, vLLM and Jina."""
    docs = originals(body)
    results = []
    for row in result["results"]:
        item: dict[str, Any] = {"index": row["index"], "relevance_score": row["relevance_score"]}
        if return_documents:
            item["document"] = echo(docs[row["index"]])
        results.append(item)
    tokens = int(result.get("usage", {}).get("tokens", 0))
    response = {
        "id": result["job_id"],
        "model": requested_model or result.get("model"),
        "results": results,
        "errors": result.get("errors", []),
        "meta": {"api_version": {"version": api_version}, "billed_units": {"search_units": 1},
                 "tokens": {"input_tokens": tokens, "output_tokens": 0}},
        "usage": {"total_tokens": tokens, "prompt_tokens": tokens, "pairs": result.get("usage", {}).get("pairs")},
    }
    if "recall" in result:  # a two-stage job: which documents its recall kept
        response["recall"] = result["recall"]
    return response
