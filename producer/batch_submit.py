"""Submitting, reading, waiting for and cancelling batches (``RerankClient.submit_batch`` and friends call these).

The submitting process only uploads a local input (streamed: a multipart upload in 8 MiB parts), creates the
batch record and sends one ``rerankq.batch`` message; it may exit right after. Submitting a batch id that
exists adds nothing; if that batch never started (the submitter died before sending its message), the message
is sent again.
"""

from __future__ import annotations

import hashlib
import re
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any, Protocol

import redis
from celery import Celery

from rerankq import keys, s3
from rerankq.batches import BATCH_ID_PATTERN, BatchRecord, BatchState, BatchStore
from rerankq.errors import InvalidRequest
from rerankq.keys import PRIORITIES
from rerankq.results import ResultStore
from rerankq.settings import Settings


class Submitter(Protocol):
    """What submitting a batch needs of ``rerankq.client.RerankClient`` (which calls the functions here)."""

    settings: Settings
    redis: redis.Redis
    results: ResultStore
    celery: Celery

    def check_callback_url(self, url: str | None) -> None: ...

    def part_of(self, job_id: str) -> Any: ...

    def batch(self, batch_id: str) -> BatchRecord: ...

PART_BYTES = 8 * 2**20


def upload_input(client: Submitter, path: str, output: str) -> str:
    """Stream a local JSONL file to ``OUTPUT/input/NAME`` (memory: a few multipart parts, whatever its size)."""
    from boto3.s3.transfer import TransferConfig

    source = Path(path)
    if not source.is_file():
        raise InvalidRequest(f"no such file: {path}", "input")
    uri = f"{output}input/{source.name}"
    bucket, key = s3.split_uri(uri)
    config = TransferConfig(multipart_threshold=PART_BYTES, multipart_chunksize=PART_BYTES, max_concurrency=2,
                            use_threads=True)
    with s3.translate_errors(uri), source.open("rb") as f:
        client.results.client.upload_fileobj(f, bucket, key, Config=config)
    return uri


def derived_id(client: Submitter, input_uri: str) -> str:
    """A batch id from the input's URI and its ETag (and version id): the same input gives the same id."""
    bucket, key = s3.split_uri(input_uri)
    with s3.translate_errors(input_uri):
        head = client.results.client.head_object(Bucket=bucket, Key=key)
    seed = f"{input_uri}\n{head.get('ETag', '')}\n{head.get('VersionId', '')}"
    return "b-" + hashlib.sha256(seed.encode()).hexdigest()[:24]


def submit_batch(client: Submitter, input: str, output: str, batch_id: str | None = None,
                 priority: str = "low", model: str | None = None, completion_window_s: float | None = None,
                 callback_url: str | None = None, npy: bool = False) -> BatchRecord:
    """Create a batch from ``input`` (``s3://…`` or a local JSONL file, uploaded first) writing to ``output``
    (``s3://bucket/prefix/``); returns its record (the existing one when the id exists). ``npy``: each results
    part's embeddings also as a ``.npy`` with an index (``rerankq.client.batches.vectors``)."""
    output = _check(client, output, priority, batch_id, completion_window_s)
    client.check_callback_url(callback_url)
    input_uri = input if input.startswith("s3://") else upload_input(client, input, output)
    batch_id = batch_id or derived_id(client, input_uri)
    now = time.time()
    home = client.part_of(batch_id)  # the batch's shard (this client, with one Redis): its record, its message
    store = BatchStore(client.settings, home.redis)
    record = BatchRecord(batch_id=batch_id, state=BatchState.VALIDATING, input_uri=input_uri, output_uri=output,
                         created_at=now, priority=priority, model=model, callback_url=callback_url, npy=npy,
                         expires_at=now + completion_window_s if completion_window_s else None)
    created = store.create(record)
    found = store.get(batch_id)
    if created or (found.state == BatchState.VALIDATING and found.started_at is None):
        home.celery.send_task(keys.BATCH_TASK_NAME, args=[batch_id], queue=keys.control_queue(client.settings),
                                task_id=f"batch-{batch_id}-{uuid.uuid4().hex[:8]}")
    return found


def _check(client: Submitter, output: str, priority: str, batch_id: str | None,
           window: float | None) -> str:
    if not output.startswith("s3://"):
        raise InvalidRequest("an s3://bucket/prefix/ URI", "output")
    output = output if output.endswith("/") else output + "/"
    bucket = s3.split_uri(output)[0]
    if client.results.bucket_exists(bucket) is False:
        raise InvalidRequest(f"bucket {bucket!r} does not exist", "output")
    if priority not in PRIORITIES:
        raise InvalidRequest(f"one of {', '.join(PRIORITIES)}", "priority")
    if batch_id is not None and not re.match(BATCH_ID_PATTERN, batch_id):
        raise InvalidRequest("letters, digits and . _ : - (at most 96, starting with a letter or digit)",
                             "batch_id")
    if window is not None and window <= 0:
        raise InvalidRequest("seconds > 0", "completion_window")
    return output


def wait_batch(client: Submitter, batch_id: str, timeout: float | None = None,
               progress: Callable[[BatchRecord], None] | None = None, interval: float = 1.0) -> BatchRecord:
    """Wait until the batch ends; ``progress(record)`` after every read. ``TimeoutError`` after ``timeout``."""
    deadline = None if timeout is None else time.monotonic() + timeout
    while True:
        record = client.batch(batch_id)
        if progress is not None:
            progress(record)
        if record.state.terminal:
            return record
        if deadline is not None and time.monotonic() > deadline:
            raise TimeoutError(f"batch {batch_id} is still {record.state.value} after {timeout:g} s")
        time.sleep(interval)


def batch_summary(record: BatchRecord) -> dict[str, Any]:
    """What ``batch status`` prints without ``--json``: state, done / total and counts."""
    return {"batch_id": record.batch_id, "state": record.state.value,
            "done": f"{record.done}/{record.counts['total']}", **record.counts}
