"""S3 reads for the media store: one shared boto3 client, ranged GETs, botocore errors translated.

botocore's own retries are off (one attempt per call) so that ``MediaStore.with_retries`` is the only retry
policy and its counters are exact.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

from reranker.media_cache import Counters
from rerankq.errors import MediaError, TransientMediaError
from rerankq.settings import Settings, knob

# Error codes S3 (and MinIO, moto) use for "try again later".
TRANSIENT_CODES = frozenset({
    "SlowDown", "Throttling", "ThrottlingException", "RequestLimitExceeded", "TooManyRequests", "RequestTimeout",
    "RequestTimeoutException", "InternalError", "ServiceUnavailable", "Busy", "XMinioServerNotInitialized",
})
# Permanent codes with the reason users see (SPEC §3: "s3://media/catalog/88.png: no such key").
PERMANENT_REASONS = {
    "NoSuchKey": "no such key", "NoSuchBucket": "no such bucket", "AccessDenied": "access denied",
    "AllAccessDisabled": "access denied", "InvalidObjectState": "object is archived (restore it first)",
    "InvalidBucketName": "invalid bucket name", "PreconditionFailed": "object changed while it was being read",
    "404": "no such key", "403": "access denied", "NotFound": "no such key",
}


@dataclass
class Part:
    """The bytes of one ranged GET and the object's ETag (to pin later ranges to the same version)."""

    data: bytes
    etag: str | None


class S3Reader:
    """One boto3 S3 client shared by all fetch threads (boto3 clients are thread-safe; sessions are not)."""

    def __init__(self, settings: Settings, counters: Counters, *, client: Any | None = None,
                 range_bytes: int = 8 * 2**20) -> None:
        self.settings, self.counters, self.range_bytes = settings, counters, range_bytes
        self._client = client
        self._lock = threading.Lock()

    @property
    def client(self) -> Any:
        if self._client is None:
            with self._lock:
                if self._client is None:
                    self._client = make_client(self.settings)
        return self._client

    def get_range(self, ref: str, bucket: str, key: str, start: int, etag: str | None = None) -> tuple[Part, int]:
        """Bytes ``[start, start + range_bytes)`` of the object and its total size."""
        end = start + self.range_bytes - 1
        kwargs: dict[str, Any] = {"Bucket": bucket, "Key": key, "Range": f"bytes={start}-{end}"}
        if etag:
            kwargs["IfMatch"] = etag
        self.counters.add(requests=1)
        with translate_errors(ref, empty_ok=start > 0):
            response = self.client.get_object(**kwargs)
            content_range = response.get("ContentRange")
            if not content_range and response.get("ContentLength", 0) > self.settings.limits.max_media_bytes:
                # The server ignored Range and is sending the whole object: refuse before reading it.
                response["Body"].close()
                raise MediaError(ref, f"object is {response['ContentLength']} bytes, over the limit "
                                      f"{self.settings.limits.max_media_bytes} ({knob('limits.max_media_bytes')})")
            data = response["Body"].read()
        self.counters.add(bytes_fetched=len(data))
        if content_range:  # "bytes 0-99/100"
            return Part(data, response.get("ETag")), int(content_range.rsplit("/", 1)[1])
        return Part(data[start:start + self.range_bytes], response.get("ETag")), len(data)

    def close(self) -> None:
        if self._client is not None:
            self._client.close()


def make_client(settings: Settings) -> Any:
    """The S3 client: endpoint from settings (unset = AWS), standard credential chain, pool = fetch threads."""
    import boto3
    from botocore.config import Config

    config = Config(max_pool_connections=settings.media.fetch_threads, connect_timeout=settings.media.timeout_s,
                    read_timeout=settings.media.timeout_s, retries={"total_max_attempts": 1, "mode": "standard"})
    return boto3.session.Session().client("s3", endpoint_url=settings.s3_endpoint_url, config=config)


@contextmanager
def translate_errors(ref: str, empty_ok: bool = False) -> Iterator[None]:
    """botocore / urllib3 / socket errors → ``MediaError`` (permanent) or ``TransientMediaError``."""
    import urllib3
    from botocore import exceptions as bx

    try:
        yield
    except bx.ClientError as exc:
        raise _client_error(ref, exc, empty_ok) from exc
    except (bx.NoCredentialsError, bx.PartialCredentialsError) as exc:
        raise MediaError(ref, "no AWS credentials found (standard AWS chain: environment, ~/.aws, "
                              "instance or pod role)") from exc
    except bx.ParamValidationError as exc:
        raise MediaError(ref, f"invalid S3 reference ({exc})") from exc
    except (bx.ConnectionError, bx.HTTPClientError, bx.IncompleteReadError) as exc:
        raise TransientMediaError(ref, f"S3 connection failed ({type(exc).__name__})") from exc
    except bx.BotoCoreError as exc:
        raise MediaError(ref, f"S3 request failed ({exc})") from exc
    except (OSError, urllib3.exceptions.HTTPError) as exc:  # resets while streaming the body, unwrapped urllib3
        raise TransientMediaError(ref, f"S3 connection failed ({type(exc).__name__}: {exc})") from exc


def _client_error(ref: str, exc: Any, empty_ok: bool) -> MediaError | TransientMediaError:
    error = exc.response.get("Error", {})
    code = str(error.get("Code", ""))
    status = int(exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode", 0) or 0)
    if code == "InvalidRange":
        return MediaError(ref, "object changed while it was being read" if empty_ok else "object is empty")
    if code in TRANSIENT_CODES or status == 429 or status >= 500:
        return TransientMediaError(ref, f"S3 {code or status} (HTTP {status})")
    reason = PERMANENT_REASONS.get(code) or f"S3 error {code or status}: {error.get('Message', '')}".rstrip(": ")
    return MediaError(ref, reason)
