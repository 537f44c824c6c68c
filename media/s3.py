"""S3 reads for the media store: ranged GETs on the shared client of ``rerankq.s3`` (one attempt per call, so
that ``MediaStore.with_retries`` is the only retry policy and its counters are exact)."""

from __future__ import annotations

import threading
from dataclasses import dataclass, field
from typing import Any

from rerankq import s3
from rerankq.errors import MediaError, TransientMediaError
from rerankq.media.cache import Counters
from rerankq.settings import Settings, knob

_IDENTITY_FIELDS = ("ETag", "VersionId", "ServerSideEncryption", "SSECustomerAlgorithm")


@dataclass
class Part:
    """The bytes of one ranged GET and the object's ETag (to pin later ranges to the same version), with what
    ``rerankq.media.identity.s3_identity`` reads of the response."""

    data: bytes
    etag: str | None
    meta: dict[str, Any] = field(default_factory=dict)


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
                    self._client = s3.make_client(self.settings.s3_endpoint_url, self.settings.media.fetch_threads,
                                                  self.settings.media.timeout_s)
        return self._client

    def get_range(self, ref: str, bucket: str, key: str, start: int, etag: str | None = None) -> tuple[Part, int]:
        """Bytes ``[start, start + range_bytes)`` of the object and its total size."""
        end = start + self.range_bytes - 1
        kwargs: dict[str, Any] = {"Bucket": bucket, "Key": key, "Range": f"bytes={start}-{end}"}
        if etag:
            kwargs["IfMatch"] = etag
        self.counters.add(requests=1)
        with s3.translate_errors(ref, MediaError, TransientMediaError, empty_ok=start > 0):
            response = self.client.get_object(**kwargs)
            content_range = response.get("ContentRange")
            if not content_range and response.get("ContentLength", 0) > self.settings.limits.max_media_bytes:
                # The server ignored Range and is sending the whole object: refuse before reading it.
                response["Body"].close()
                raise MediaError(ref, f"object is {response['ContentLength']} bytes, over the limit "
                                      f"{self.settings.limits.max_media_bytes} ({knob('limits.max_media_bytes')})")
            data = response["Body"].read()
        self.counters.add(bytes_fetched=len(data))
        meta = {k: response[k] for k in _IDENTITY_FIELDS if response.get(k)}
        if content_range:  # "bytes 0-99/100"
            return Part(data, response.get("ETag"), meta), int(content_range.rsplit("/", 1)[1])
        return Part(data[start:start + self.range_bytes], response.get("ETag"), meta), len(data)

    def head(self, ref: str, bucket: str, key: str) -> dict[str, Any]:
        """What ``rerankq.media.identity.s3_identity`` reads of the object (ETag, version, encryption): one HEAD."""
        self.counters.add(requests=1, heads=1)
        with s3.translate_errors(ref, MediaError, TransientMediaError):
            response = self.client.head_object(Bucket=bucket, Key=key)
        return {k: response[k] for k in _IDENTITY_FIELDS if response.get(k)}

    def close(self) -> None:
        if self._client is not None:
            self._client.close()
