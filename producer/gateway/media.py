"""Uploads: bytes from a browser or a ``data:`` URI → an object in the uploads bucket, named by content.

The key is the SHA-256 of the bytes (same bytes, same reference, stored once). The type is sniffed from the
first bytes, never taken from a file name or a declared type; nothing is decoded here (workers decode, with
their limits). How long uploads live is the bucket's lifecycle rule (compose and k8s set 7 days).
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import re
from typing import Any

from rerankq.errors import InvalidRequest, PermanentError, TransientError
from rerankq.s3 import split_uri as split_s3_uri
from rerankq.settings import Settings

# (offset, magic bytes, MIME type, extension), checked in order.
_MAGIC: tuple[tuple[int, bytes, str, str], ...] = (
    (0, b"\x89PNG\r\n\x1a\n", "image/png", "png"),
    (0, b"\xff\xd8\xff", "image/jpeg", "jpg"),
    (0, b"GIF87a", "image/gif", "gif"),
    (0, b"GIF89a", "image/gif", "gif"),
    (0, b"BM", "image/bmp", "bmp"),
    (0, b"II*\x00", "image/tiff", "tif"),
    (0, b"MM\x00*", "image/tiff", "tif"),
    (0, b"\x1aE\xdf\xa3", "video/webm", "webm"),
)
_UPLOAD_NAME = re.compile(r"^[0-9a-f]{64}\.[a-z0-9]{2,5}$")  # what ``Uploads.store`` names an object


def sniff(data: bytes) -> tuple[str, str]:
    """(MIME type, extension) of an image or video, from its first bytes; ``InvalidRequest`` otherwise."""
    for offset, magic, mime, ext in _MAGIC:
        if data[offset:offset + len(magic)] == magic:
            return mime, ext
    if data[:4] == b"RIFF" and data[8:12] == b"WEBP":
        return "image/webp", "webp"
    if data[:4] == b"RIFF" and data[8:12] == b"AVI ":
        return "video/x-msvideo", "avi"
    if data[4:8] == b"ftyp":
        brand = data[8:12]
        if brand in (b"avif", b"avis", b"heic", b"heix", b"mif1"):
            return "image/avif" if brand.startswith(b"avi") else "image/heic", brand.decode().strip()
        return ("video/quicktime", "mov") if brand == b"qt  " else ("video/mp4", "mp4")
    raise InvalidRequest("not an image or video this gateway recognises (PNG, JPEG, GIF, WebP, BMP, TIFF, AVIF, "
                         "MP4, MOV, WebM, AVI), judged by its bytes")


def decode_data_uri(uri: str, limit: int) -> bytes:
    """The bytes of a base64 ``data:`` URI, at most ``limit`` of them."""
    header, sep, payload = uri.partition(",")
    if not sep or not header.endswith(";base64"):
        raise InvalidRequest("a data: URI must be base64 (data:<type>;base64,<bytes>)")
    if len(payload) * 3 // 4 > limit:
        raise InvalidRequest(f"{len(payload) * 3 // 4} bytes, over the limit {limit} (gateway.max_upload_bytes)")
    try:
        return base64.b64decode(payload, validate=True)
    except (binascii.Error, ValueError):
        raise InvalidRequest("the data: URI is not valid base64") from None


class Uploads:
    """Stores files in ``settings.gateway.uploads_uri`` under ``{sha256}.{ext}``; boto3 is called in threads."""

    def __init__(self, settings: Settings, client: Any = None) -> None:
        self.settings = settings
        self.bucket, prefix = split_s3_uri(settings.gateway.uploads_uri)
        self.prefix = prefix.strip("/")
        self._client = client
        self._bucket_checked = False

    @property
    def client(self) -> Any:
        if self._client is None:
            import boto3

            self._client = boto3.client("s3", endpoint_url=self.settings.s3_endpoint_url)
        return self._client

    def store(self, data: bytes) -> dict[str, Any]:
        """Store ``data`` (once per content); returns ``{"uri", "type", "bytes", "sha256"}``."""
        limit = self.settings.gateway.max_upload_bytes
        if len(data) > limit:
            raise InvalidRequest(f"{len(data)} bytes, over the limit {limit} (gateway.max_upload_bytes)", "file")
        if not data:
            raise InvalidRequest("an empty file", "file")
        mime, ext = sniff(data[:64])
        digest = hashlib.sha256(data).hexdigest()
        key = self._key(f"{digest}.{ext}")
        self._put(key, data, mime)
        return {"uri": f"s3://{self.bucket}/{key}", "type": mime, "bytes": len(data), "sha256": digest}

    def store_data_uri(self, uri: str) -> str:
        return str(self.store(decode_data_uri(uri, self.settings.gateway.max_upload_bytes))["uri"])

    def _key(self, name: str) -> str:
        return f"{self.prefix}/{name}" if self.prefix else name

    def read(self, uri: str) -> tuple[bytes, str] | None:
        """The bytes and type of an upload by its reference (as ``store`` returned it); None when it is gone.
        ``InvalidRequest`` naming ``uri`` for a reference outside the uploads (those are not handed back)."""
        from botocore.exceptions import BotoCoreError, ClientError

        bucket, _, key = uri.removeprefix("s3://").partition("/") if uri.startswith("s3://") else ("", "", "")
        name = key.rpartition("/")[2]
        if bucket != self.bucket or key != self._key(name) or not _UPLOAD_NAME.match(name):
            raise InvalidRequest("only uploads (s3:// references this gateway returned) are handed back", "uri")
        try:
            body = self.client.get_object(Bucket=bucket, Key=key)
            data = body["Body"].read(self.settings.gateway.max_upload_bytes + 1)
        except ClientError as exc:
            if exc.response.get("Error", {}).get("Code") in ("NoSuchKey", "404", "NoSuchBucket"):
                return None
            raise PermanentError(f"cannot read the upload {uri}: {exc}") from exc
        except BotoCoreError as exc:
            raise TransientError(f"cannot read the upload {uri}: {exc}") from exc
        return data, sniff(data[:64])[0]

    def _put(self, key: str, data: bytes, mime: str) -> None:
        from botocore.exceptions import BotoCoreError, ClientError

        try:
            self._ensure_bucket()
            self.client.put_object(Bucket=self.bucket, Key=key, Body=data, ContentType=mime)
        except ClientError as exc:
            raise PermanentError(f"cannot store the upload in s3://{self.bucket}/{key}: {exc}") from exc
        except BotoCoreError as exc:
            raise TransientError(f"cannot store the upload in s3://{self.bucket}/{key}: {exc}") from exc

    def _ensure_bucket(self) -> None:
        from botocore.exceptions import ClientError

        if self._bucket_checked:
            return
        try:
            self.client.head_bucket(Bucket=self.bucket)
        except ClientError:
            self.client.create_bucket(Bucket=self.bucket)
        self._bucket_checked = True

    def ping(self) -> None:
        """Check the bucket is reachable (``/readyz``)."""
        self._ensure_bucket()
