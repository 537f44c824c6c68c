"""The media store: a reference (``s3://``, ``https://``, ``file://``) → its bytes.

- ``s3://bucket/key`` through ONE shared boto3 client (endpoint ``RERANKQ_S3_ENDPOINT_URL`` or AWS, the
  standard credential chain, a connection pool of ``media.fetch_threads``). Objects are read with ranged
  GETs of ``RANGE_BYTES``: the first range tells the size, so an object over ``limits.max_media_bytes`` is
  refused after one small request, a failed range is retried alone, and objects over ``SPOOL_BYTES`` go to a
  temporary file instead of memory (see ``MediaStore.open``).
- ``https://`` only for allowed hosts and public addresses (``rerankq.media.http``).
- ``file://`` and bare local paths only when ``allow_file_urls`` is on.
- anything else is refused with the reason.

Transient failures (timeouts, 5xx, throttling, resets) are retried here with exponential backoff
(``media.retries``, ``media.retry_backoff_s``); when retries run out the store raises ``TransientMediaError``.
Permanent ones raise ``MediaError(ref, reason)`` at once. botocore, socket and http errors are translated in
this module and ``media_http``; nothing above catches them.
"""

from __future__ import annotations

import functools
import logging
import os
import random
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, TypeVar
from urllib.parse import unquote, urlsplit

from rerankq import s3
from rerankq.errors import MediaError, TransientMediaError
from rerankq.media.cache import Counters
from rerankq.media.http import HttpFetcher, HttpPolicy
from rerankq.media.identity import bytes_identity, local_identity, s3_identity
from rerankq.media.s3 import S3Reader
from rerankq.settings import Settings, knob

log = logging.getLogger(__name__)

T = TypeVar("T")
RANGE_BYTES = 8 * 2**20  # bytes per ranged GET
SPOOL_BYTES = 32 * 2**20  # objects larger than this are written to a temporary file by ``open``

Source = bytes | Path


class MediaStore:
    """Turns media references into bytes, with per-scheme policy, limits, retries and counters.

    Thread-safe: one store (and its S3 connection pool) serves every fetch thread of a worker.
    ``http_policy`` and ``s3_client`` are injection points for tests; by default they come from settings.
    ``range_bytes`` (bytes per ranged S3 GET) and ``spool_bytes`` (larger objects go to a temporary file) are
    tuning constants, not settings.
    """

    def __init__(self, settings: Settings, *, http_policy: HttpPolicy | None = None, s3_client: Any | None = None,
                 range_bytes: int = RANGE_BYTES, spool_bytes: int = SPOOL_BYTES) -> None:
        self.settings = settings
        self.max_bytes = settings.limits.max_media_bytes
        self.spool_bytes = spool_bytes
        self.counters = Counters()
        self._s3 = S3Reader(settings, self.counters, client=s3_client, range_bytes=range_bytes)
        policy = http_policy or HttpPolicy(allowed_hosts=frozenset(settings.http_allowed_hosts))
        self._http = HttpFetcher(policy, self.max_bytes, settings.media.timeout_s)

    def fetch(self, ref: str) -> bytes:
        """The bytes of ``ref``. Raises ``MediaError`` (permanent) or ``TransientMediaError`` (retries spent)."""
        with self.open(ref, spool=False) as source:
            return source if isinstance(source, bytes) else source.read_bytes()

    @contextmanager
    def open(self, ref: str, spool: bool = True) -> Iterator[Source]:
        """The content of ``ref`` as bytes, or as a path for local files and (``spool``) large S3 objects.

        A spooled temporary file is removed when the context exits.
        """
        with self.open_identified(ref, spool, identify=False) as (source, _):
            yield source

    @contextmanager
    def open_identified(self, ref: str, spool: bool = True,
                        identify: bool = True) -> Iterator[tuple[Source, str | None]]:
        """``open``, with what the content is (``rerankq.media.identity``): the ETag of the very GET that read an S3
        object, the digest of the bytes fetched or of the local file (None when ``identify`` is off)."""
        kind = self._scheme(ref)
        started = time.perf_counter()
        if kind == "file":
            path = self._local_path(ref)
            self.counters.add(fetches=1, bytes_fetched=path.stat().st_size)
            yield path, local_identity(path) if identify else None
            return
        if kind == "https":
            data = self.with_retries(ref, lambda: self._http.fetch(ref))
            self.counters.add(fetches=1, bytes_fetched=len(data),
                              fetch_seconds=time.perf_counter() - started)
            yield data, bytes_identity(data) if identify else None
            return
        with self._s3_source(ref, spool) as (source, identity):
            self.counters.add(fetch_seconds=time.perf_counter() - started)
            yield source, identity

    def identify(self, ref: str) -> str | None:
        """What ``ref`` holds now, without fetching it (``rerankq.media.identity``): an S3 object by one HEAD (no
        retries), a local file by its digest. None for https:// (only its bytes can say) and whenever it cannot
        be told (no such object, the endpoint down): the medium is then fetched as usual and reports its own
        error. Never raises."""
        try:
            kind = self._scheme(ref)
            if kind == "s3":
                bucket, key = _split_s3(ref)
                return s3_identity(bucket, key, self._s3.head(ref, bucket, key))
            if kind == "file":
                return local_identity(self._local_path(ref))
        except Exception as exc:  # an identity is an optimisation: the fetch will say what is wrong
            log.debug("cannot identify %s: %s", ref, exc)
        return None

    def _scheme(self, ref: str) -> str:
        if not isinstance(ref, str) or not ref.strip():
            raise MediaError(str(ref), "empty or non-string media reference")
        scheme = urlsplit(ref).scheme.lower() if "://" in ref else ""
        if scheme in ("s3", "file"):
            return scheme
        if scheme in self._http.policy.schemes:  # https; http too only under a test policy
            return "https"
        if scheme == "" and not ref.startswith(("http:", "https:", "s3:")):
            return "file"  # a bare local path
        if scheme == "http":
            raise MediaError(ref, "plain http:// is refused; use https:// (host on RERANKQ_HTTP_ALLOWED_HOSTS)")
        if not scheme:
            raise MediaError(ref, "malformed reference (expected s3://bucket/key, https://host/path or file:///path)")
        raise MediaError(ref, f"unsupported reference scheme {scheme!r} (use s3://, https:// or file://)")

    def _local_path(self, ref: str) -> Path:
        if not self.settings.allow_file_urls:
            raise MediaError(ref, "local files are disabled (set RERANKQ_ALLOW_FILE_URLS=true to allow them)")
        if ref.startswith("file://"):
            parts = urlsplit(ref)
            if parts.netloc not in ("", "localhost"):
                raise MediaError(ref, f"file:// reference names a remote host {parts.netloc!r}")
            path = Path(unquote(parts.path))
        else:
            path = Path(ref).expanduser()
        if not path.is_file():
            raise MediaError(ref, "no such file")
        if not os.access(path, os.R_OK):
            raise MediaError(ref, "file is not readable")
        size = path.stat().st_size
        if size > self.max_bytes:
            raise MediaError(ref, f"file is {size} bytes, over the limit {self.max_bytes} "
                                  f"({knob('limits.max_media_bytes')})")
        return path

    @contextmanager
    def _s3_source(self, ref: str, spool: bool) -> Iterator[tuple[Source, str | None]]:
        bucket, key = _split_s3(ref)
        first, total = self.with_retries(ref, lambda: self._s3.get_range(ref, bucket, key, 0))
        if total > self.max_bytes:
            raise MediaError(ref, f"object is {total} bytes, over the limit {self.max_bytes} "
                                  f"({knob('limits.max_media_bytes')})")
        identity = s3_identity(bucket, key, first.meta)  # later ranges are pinned to this ETag
        if total <= len(first.data):
            self.counters.add(fetches=1)
            yield first.data, identity
            return
        if not spool or total <= self.spool_bytes:
            parts = [first.data, *self._s3_rest(ref, bucket, key, first.etag, total, len(first.data))]
            self.counters.add(fetches=1)
            yield b"".join(parts), identity
            return
        with tempfile.NamedTemporaryFile(prefix="rerankq-media-", suffix=Path(key).suffix) as spooled:
            spooled.write(first.data)
            for part in self._s3_rest(ref, bucket, key, first.etag, total, len(first.data)):
                spooled.write(part)
            spooled.flush()
            self.counters.add(fetches=1, spooled=1)
            yield Path(spooled.name), identity

    def _s3_rest(self, ref: str, bucket: str, key: str, etag: str | None, total: int, start: int) -> Iterator[bytes]:
        while start < total:
            part = self.with_retries(ref, functools.partial(self._s3.get_range, ref, bucket, key, start, etag))[0]
            if not part.data:
                raise TransientMediaError(ref, f"object ended at byte {start} of {total}")
            start += len(part.data)
            yield part.data

    def with_retries(self, ref: str, call: Callable[[], T]) -> T:
        """``call()``, retried on ``TransientMediaError`` with exponential backoff and a little jitter."""
        attempts = self.settings.media.retries + 1
        for attempt in range(attempts):
            try:
                return call()
            except TransientMediaError as exc:
                if attempt + 1 >= attempts:
                    self.counters.add(failures=1)
                    raise TransientMediaError(ref, f"{exc.reason} (gave up after {attempts} attempts, "
                                                   "media.retries)") from exc
                delay = self.settings.media.retry_backoff_s * 2**attempt * (1 + random.random() / 4)
                log.info("retrying %s in %.2f s: %s", ref, delay, exc.reason)
                self.counters.add(retries=1)
                time.sleep(delay)
        raise AssertionError("unreachable")

    def close(self) -> None:
        """Release the S3 connection pool."""
        self._s3.close()


def _split_s3(ref: str) -> tuple[str, str]:
    """Bucket and key of a media reference (``rerankq.s3.split_uri``), or the ``MediaError`` that says why not."""
    try:
        bucket, key = s3.split_uri(ref)
    except ValueError:
        bucket = key = ""
    if not bucket or not key:
        raise MediaError(ref, "an s3:// reference needs a bucket and a key (s3://bucket/key)")
    return bucket, key
