"""The one S3 access point: the client factory, the ``s3://`` URI parser and the translation of botocore
errors into rerankq's permanent / transient tree. Media reads, result writes, checkpoint downloads and the
producer's result reads all go through it.

botocore's own retries are off (one attempt per call) unless asked for: the caller's retry policy (media
retries with counters, a requeued job for a result write) is the only one, so counts and delays are exact.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

from rerankq.errors import PermanentError, RefError, TransientError

# Error codes S3 (and MinIO, moto) use for "try again later".
TRANSIENT_CODES = frozenset({
    "SlowDown", "Throttling", "ThrottlingException", "RequestLimitExceeded", "TooManyRequests", "RequestTimeout",
    "RequestTimeoutException", "InternalError", "ServiceUnavailable", "Busy", "XMinioServerNotInitialized",
})
# Permanent codes with the reason users see in a result's ``errors`` ("s3://media/catalog/88.png: no such key").
PERMANENT_REASONS = {
    "NoSuchKey": "no such key", "NoSuchBucket": "no such bucket", "AccessDenied": "access denied",
    "AllAccessDisabled": "access denied", "InvalidObjectState": "object is archived (restore it first)",
    "InvalidBucketName": "invalid bucket name", "PreconditionFailed": "object changed while it was being read",
    "404": "no such key", "403": "access denied", "NotFound": "no such key",
}


class StorageError(RefError, PermanentError):
    """An S3 call failed for good (no such bucket or key, access denied). Names the URI and the reason."""


class TransientStorageError(RefError, TransientError):
    """An S3 call failed in a way that may pass (endpoint down, timeout, throttling, 5xx)."""


def split_uri(uri: str) -> tuple[str, str]:
    """``s3://bucket/key`` → (bucket, key), the key taken literally (S3 keys may hold ``?``, ``#``, ``%``).
    The key may be empty (a bucket or a prefix); ``ValueError`` when it is not an s3:// URI with a bucket."""
    if not uri.startswith("s3://"):
        raise ValueError(f"{uri!r} is not an s3:// URI")
    bucket, _, key = uri[len("s3://"):].partition("/")
    if not bucket:
        raise ValueError(f"{uri!r} names no bucket (s3://bucket/key)")
    return bucket, key


def make_client(endpoint_url: str | None, pool: int = 10, timeout_s: float = 30.0, attempts: int = 1) -> Any:
    """An S3 client: ``endpoint_url`` (unset = AWS), the standard credential chain, a connection pool of
    ``pool``, ``attempts`` tries per call. Thread-safe; build one per process and share it."""
    import boto3
    from botocore.config import Config

    config = Config(max_pool_connections=pool, connect_timeout=timeout_s, read_timeout=timeout_s,
                    retries={"total_max_attempts": attempts, "mode": "standard"})
    return boto3.session.Session().client("s3", endpoint_url=endpoint_url, config=config)


@contextmanager
def translate_errors(ref: str, permanent: Callable[[str, str], PermanentError] = StorageError,
                     transient: Callable[[str, str], TransientError] = TransientStorageError,
                     empty_ok: bool = False) -> Iterator[None]:
    """botocore / urllib3 / socket errors → ``permanent(ref, reason)`` or ``transient(ref, reason)``."""
    import urllib3
    from botocore import exceptions as bx

    try:
        yield
    except bx.ClientError as exc:
        is_transient, reason = classify(exc, empty_ok)
        raise (transient if is_transient else permanent)(ref, reason) from exc
    except (bx.NoCredentialsError, bx.PartialCredentialsError) as exc:
        raise permanent(ref, "no AWS credentials found (standard AWS chain: environment, ~/.aws, "
                             "instance or pod role)") from exc
    except bx.ParamValidationError as exc:
        raise permanent(ref, f"invalid S3 reference ({exc})") from exc
    except (bx.ConnectionError, bx.HTTPClientError, bx.IncompleteReadError) as exc:
        raise transient(ref, f"S3 connection failed ({type(exc).__name__})") from exc
    except bx.BotoCoreError as exc:
        raise permanent(ref, f"S3 request failed ({exc})") from exc
    except (OSError, urllib3.exceptions.HTTPError) as exc:  # resets while streaming the body, unwrapped urllib3
        raise transient(ref, f"S3 connection failed ({type(exc).__name__}: {exc})") from exc


def classify(exc: Any, empty_ok: bool = False) -> tuple[bool, str]:
    """A botocore ``ClientError`` → (transient?, the reason a user reads)."""
    error = exc.response.get("Error", {})
    code = str(error.get("Code", ""))
    status = int(exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode", 0) or 0)
    if code == "InvalidRange":
        return False, "object changed while it was being read" if empty_ok else "object is empty"
    if code in TRANSIENT_CODES or status == 429 or status >= 500:
        return True, f"S3 {code or status} (HTTP {status})"
    return False, PERMANENT_REASONS.get(code) or f"S3 error {code or status}: {error.get('Message', '')}".rstrip(": ")
