"""A job's result (SPEC §3): built from scores and per-document errors, kept inline in Redis or in S3.

Field names follow Cohere / vLLM rerank: ``results`` (index, relevance_score) sorted by score descending
and cut to ``top_n``; ``scores`` in input order with ``None`` for documents that failed; ``errors``.
"""

from __future__ import annotations

import json
import time
from typing import Any

from rerankq.errors import PermanentError, TransientError

UNKNOWN_TTL_S = 60.0  # how long a bucket whose existence could not be checked is not checked again


def build_result(job: dict[str, Any], model: str, scores: list[float | None], errors: dict[int, str],
                 usage: dict[str, int], timings: dict[str, float]) -> dict[str, Any]:
    """Assemble the result of one job. Ties keep input order (stable sort)."""
    ranked = sorted((i for i, s in enumerate(scores) if s is not None), key=lambda i: -scores[i])  # type: ignore[operator]
    top_n = job.get("top_n")
    if top_n is not None:
        ranked = ranked[:top_n]
    return {
        "job_id": job["job_id"],
        "model": model,
        "results": [{"index": i, "relevance_score": scores[i]} for i in ranked],
        "scores": scores,
        "errors": [{"index": i, "error": errors[i]} for i in sorted(errors)],
        "usage": usage,
        "timings": {k: round(v, 6) for k, v in timings.items()},
    }


def split_s3_uri(uri: str) -> tuple[str, str]:
    bucket, _, key = uri[len("s3://"):].partition("/")
    return bucket, key


def result_location(prefix: str, job_id: str) -> str:
    """Where a result goes under an ``s3://bucket/prefix/``."""
    return f"{prefix.rstrip('/')}/{job_id}.json"


class ResultStore:
    """Result JSON in S3 (large results, or jobs with ``result_uri``). botocore errors are translated."""

    def __init__(self, endpoint_url: str | None, client: Any = None) -> None:
        self.endpoint_url = endpoint_url
        self._client = client
        self._buckets: set[str] = set()  # buckets known to exist: checked once, not on every write
        self._checker: Any = None  # a client for bucket_exists: one attempt, short timeouts
        self._unknown: dict[str, float] = {}  # bucket -> when bucket_exists could not tell

    @property
    def client(self) -> Any:
        if self._client is None:
            import boto3

            self._client = boto3.client("s3", endpoint_url=self.endpoint_url)
        return self._client

    def put(self, uri: str, result: dict[str, Any], create_bucket: bool = False) -> None:
        from botocore.exceptions import BotoCoreError, ClientError

        bucket, key = split_s3_uri(uri)
        body = json.dumps(result, separators=(",", ":")).encode()
        try:
            if create_bucket:
                self._ensure_bucket(bucket)
            self.client.put_object(Bucket=bucket, Key=key, Body=body, ContentType="application/json")
        except ClientError as exc:
            raise PermanentError(f"cannot write the result to {uri}: {exc}") from exc
        except BotoCoreError as exc:
            raise TransientError(f"cannot write the result to {uri}: {exc}") from exc

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
            import boto3
            from botocore.config import Config

            config = Config(connect_timeout=2, read_timeout=5, retries={"max_attempts": 1})
            self._checker = boto3.client("s3", endpoint_url=self.endpoint_url, config=config)
        return self._checker

    def get(self, uri: str) -> dict[str, Any]:
        from botocore.exceptions import BotoCoreError, ClientError

        bucket, key = split_s3_uri(uri)
        try:
            body = self.client.get_object(Bucket=bucket, Key=key)["Body"].read()
        except ClientError as exc:
            raise PermanentError(f"cannot read the result at {uri}: {exc}") from exc
        except BotoCoreError as exc:
            raise TransientError(f"cannot read the result at {uri}: {exc}") from exc
        return json.loads(body)
