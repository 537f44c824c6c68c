"""Batch input: JSONL lines read from S3 with their byte offsets, and each line → a job or an error.

A line is a job (docs/USAGE.md, *The job*) plus an optional ``custom_id``, or the OpenAI / ``vllm run-batch`` line
``{"custom_id", "method": "POST", "url": "/v1/rerank", "body": {…}}`` whose body is a Cohere or vLLM rerank
request (``rerankq.client.dialects``), or with ``"url": "/v1/embeddings"`` an OpenAI embeddings request
(``rerankq.client.embed_dialects``). The batch gives every job its id (``{batch_id}-{line}``; a line with a
``job_id`` is an error line), its priority and model (over the line's), and its completion window, which caps
the line's own deadline.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

from rerankq import s3
from rerankq.client.dialects import to_job
from rerankq.client.embed_dialects import openai_to_job
from rerankq.errors import InvalidRequest
from rerankq.jobs import deadline_of
from rerankq.schema import parse_job
from rerankq.settings import Settings

RERANK_URLS = ("/v1/rerank", "/v2/rerank", "/rerank")
EMBED_URLS = ("/v1/embeddings",)
BATCH_URLS = (*RERANK_URLS, *EMBED_URLS)


@dataclass
class Line:
    """One input line: its number (1-based), ``custom_id``, and the job it asks for or why it cannot."""

    number: int
    custom_id: str | None
    job: dict[str, Any] | None = None
    error: str | None = None
    state: str = "failed"  # for an error line: the outcome it counts as, and its error code
    code: str = "invalid_request"


def read_lines(client: Any, uri: str, offset: int = 0, chunk_bytes: int = 1 << 20) -> Iterator[tuple[bytes, int]]:
    """The lines of an S3 object from byte ``offset`` on, each with the offset just after it (newline
    included): where reading resumes after it. Streams: never holds more than a chunk and one line."""
    bucket, key = s3.split_uri(uri)
    with s3.translate_errors(uri):
        body = client.get_object(Bucket=bucket, Key=key, **({"Range": f"bytes={offset}-"} if offset else {}))["Body"]
    rest = b""
    position = offset
    with s3.translate_errors(uri):
        for chunk in body.iter_chunks(chunk_bytes):
            rest += chunk
            *complete, rest = rest.split(b"\n")
            for line in complete:
                position += len(line) + 1
                yield line, position
    if rest:
        yield rest, position + len(rest)


def _no_data_uris(uri: str) -> str:
    raise InvalidRequest("data: URIs are not accepted in batch lines: reference media by s3:// or https://")


def parse_line(raw: bytes, number: int, settings: Settings, defaults: dict[str, Any]) -> Line:
    """A line → a validated job (with the batch's ``defaults``: id, priority, model, deadline) or its error."""
    try:
        data = json.loads(raw)
    except ValueError as exc:
        return Line(number, None, error=f"not JSON: {exc}")
    if not isinstance(data, dict):
        return Line(number, None, error=f"a line is a JSON object, got a JSON {type(data).__name__}")
    custom_id = data.pop("custom_id", None)
    if custom_id is not None and not isinstance(custom_id, str | int):
        return Line(number, None, error="custom_id: a string")
    custom_id = None if custom_id is None else str(custom_id)
    try:
        job = _job_of(data)
        if "job_id" in job:
            raise InvalidRequest("set by the batch ({batch_id}-{line}), not by a line", "job_id")
        return Line(number, custom_id, job=parse_job(_with_defaults(job, defaults), settings).wire())
    except InvalidRequest as exc:
        return Line(number, custom_id, error=str(exc))


def _with_defaults(job: dict[str, Any], defaults: dict[str, Any]) -> dict[str, Any]:
    """The batch's id, priority and model; its completion window caps the line's own deadline, if any."""
    job = {**job, **{k: v for k, v in defaults.items() if k != "expires_at" and v is not None}}
    window = defaults.get("expires_at")
    if window is not None:
        own = deadline_of(job, time.time())
        job.pop("deadline_s", None)
        job["expires_at"] = window if own is None else min(float(window), own)
    return job


def _job_of(data: dict[str, Any]) -> dict[str, Any]:
    if "body" not in data and "url" not in data:
        return data
    method, url = data.pop("method", "POST"), data.pop("url", None)
    if method != "POST":
        raise InvalidRequest("only POST", "method")
    if url not in BATCH_URLS:
        raise InvalidRequest(f"one of {', '.join(BATCH_URLS)}", "url")
    if set(data) != {"body"}:
        raise InvalidRequest("unknown field", sorted(set(data) - {"body"})[0] if set(data) - {"body"} else "body")
    if url in EMBED_URLS:
        return openai_to_job(data["body"], _no_data_uris)
    return to_job(data["body"], _no_data_uris)


def custom_id_of(raw: bytes) -> str | None:
    try:
        value = json.loads(raw).get("custom_id")
    except (ValueError, AttributeError):
        return None
    return None if value is None else str(value)


def error_line(custom_id: str | None, number: int, job_id: str | None, state: str, code: str,
               message: str | None) -> dict[str, Any]:
    """An ``errors/`` part line."""
    return {"custom_id": custom_id, "line": number, "job_id": job_id, "state": state,
            "error": {"code": code, "message": message or state}}
