"""A job's result (docs/USAGE.md, *The result*): built from scores and per-document errors (an embedding job's:
from vectors and per-input errors), kept inline in Redis or in S3.

Field names follow Cohere / vLLM rerank: ``results`` (index, relevance_score) sorted by score descending
and cut to ``top_n``; ``scores`` in input order with ``None`` for documents that failed; ``errors``.
"""

from __future__ import annotations

import base64
import json
import struct
import time
from typing import Any

from rerankq import s3

UNKNOWN_TTL_S = 60.0  # how long a bucket whose existence could not be checked is not checked again


def build_result(job_id: str, top_n: int | None, model: str, scores: list[float | None], errors: dict[int, str],
                 usage: dict[str, Any], timings: dict[str, float]) -> dict[str, Any]:
    """Assemble the result of one job: the only place a result is built. Ties keep input order (stable sort)."""
    scored = [(i, s) for i, s in enumerate(scores) if s is not None]
    ranked = [i for i, _ in sorted(scored, key=lambda item: -item[1])]
    if top_n is not None:
        ranked = ranked[:top_n]
    return {
        "job_id": job_id,
        "model": model,
        "results": [{"index": i, "relevance_score": scores[i]} for i in ranked],
        "scores": scores,
        "errors": [{"index": i, "error": errors[i]} for i in sorted(errors)],
        "usage": usage,
        "timings": {k: round(v, 6) for k, v in timings.items()},
    }


def build_embed_result(job_id: str, model: str, vectors: list[list[float] | str | None], dimensions: int,
                       errors: dict[int, str], usage: dict[str, Any], timings: dict[str, float]) -> dict[str, Any]:
    """The result of an embedding job: ``embeddings`` in input order (a list of numbers, or base64 float32;
    None for an input that failed), their ``dimensions``, ``errors``, ``usage`` and ``timings``."""
    return {
        "job_id": job_id,
        "model": model,
        "task": "embed",
        "dimensions": dimensions,
        "embeddings": vectors,
        "errors": [{"index": i, "error": errors[i]} for i in sorted(errors)],
        "usage": usage,
        "timings": {k: round(v, 6) for k, v in timings.items()},
    }


def vector_bytes(vector: list[float] | str) -> bytes:
    """A vector as an embedding result holds it (a list of numbers, or base64 ``encoding_format``) as its
    little-endian float32 bytes."""
    if isinstance(vector, str):
        return base64.b64decode(vector)
    return struct.pack(f"<{len(vector)}f", *vector)


def result_location(prefix: str, job_id: str) -> str:
    """Where a result goes under an ``s3://bucket/prefix/``."""
    return f"{prefix.rstrip('/')}/{job_id}.json"


class ResultStore:
    """Result JSON in S3 (large results, or jobs with ``result_uri``), through ``rerankq.s3``: a failure is a
    ``StorageError`` (permanent: no such bucket, access denied) or a ``TransientStorageError`` (retry later)."""

    def __init__(self, endpoint_url: str | None, client: Any = None) -> None:
        self.endpoint_url = endpoint_url
        self._client = client
        self._buckets: set[str] = set()  # buckets known to exist: checked once, not on every write
        self._checker: Any = None  # a client for bucket_exists: one attempt, short timeouts
        self._unknown: dict[str, float] = {}  # bucket -> when bucket_exists could not tell

    @property
    def client(self) -> Any:
        if self._client is None:
            self._client = s3.make_client(self.endpoint_url)
        return self._client

    def put(self, uri: str, result: dict[str, Any], create_bucket: bool = False) -> None:
        bucket, key = s3.split_uri(uri)
        body = json.dumps(result, separators=(",", ":")).encode()
        with s3.translate_errors(uri):
            if create_bucket:
                self._ensure_bucket(bucket)
            self.client.put_object(Bucket=bucket, Key=key, Body=body, ContentType="application/json")

    def _ensure_bucket(self, bucket: str) -> None:
        from botocore.exceptions import ClientError

        if bucket in self._buckets:
            return
        try:
            self.client.head_bucket(Bucket=bucket)
        except ClientError:
            self.client.create_bucket(Bucket=bucket)
        self._buckets.add(bucket)

    def bucket_exists(self, bucket: str) -> bool | None:
        """Whether ``bucket`` exists: True, False, or None when this process cannot tell (no credentials, no
        access, endpoint unreachable). A quick check: one attempt, short timeouts. A bucket found is not
        checked again; one this process could not check is not retried for ``UNKNOWN_TTL_S``."""
        from botocore.exceptions import BotoCoreError, ClientError

        if bucket in self._buckets:
            return True
        if time.monotonic() - self._unknown.get(bucket, -UNKNOWN_TTL_S) < UNKNOWN_TTL_S:
            return None
        try:
            self._check_client().head_bucket(Bucket=bucket)
        except ClientError as exc:
            if str(exc.response.get("Error", {}).get("Code", "")) in ("404", "NoSuchBucket", "NotFound"):
                return False
            self._unknown[bucket] = time.monotonic()  # e.g. 403: the bucket is someone else's business
            return None
        except BotoCoreError:  # no credentials, endpoint unreachable
            self._unknown[bucket] = time.monotonic()
            return None
        self._buckets.add(bucket)
        return True

    def _check_client(self) -> Any:
        if self._checker is None:
            self._checker = s3.make_client(self.endpoint_url, pool=2, timeout_s=3.0)
        return self._checker

    def get(self, uri: str) -> dict[str, Any]:
        bucket, key = s3.split_uri(uri)
        with s3.translate_errors(uri):
            body = self.client.get_object(Bucket=bucket, Key=key)["Body"].read()
        result: dict[str, Any] = json.loads(body)
        return result
