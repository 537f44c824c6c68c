"""A batch's output: parts written as lines end, counts, and the manifest once it ends.

``PREFIX/results/part-NNNNN.jsonl``: one line per input line whose job succeeded, ``{"custom_id", "line",
**the job's result}``. ``PREFIX/errors/part-NNNNN.jsonl``: one line per input line that did not,
``{"custom_id", "line", "job_id", "state", "error": {"code", "message"}}``. A batch submitted with ``npy`` also
gets each results part's embeddings as ``.npy`` with an index (``rerankq.client.batches.vectors``).
``PREFIX/manifest.json``: the
parts and the counts, once the batch has ended. A batch with a ``callback_url`` then gets its completion event
(``batch.<state>``, ``rerankq.callbacks``).
"""

from __future__ import annotations

import hashlib
import json
import logging
import time
from typing import Any, Protocol

import redis

from rerankq import keys, s3
from rerankq.batches import BatchRecord, BatchState, BatchStore
from rerankq.callbacks import Outbox
from rerankq.client.batches import vectors
from rerankq.client.batches.lines import error_line
from rerankq.errors import CallbackRefused, JobFailed, PermanentError
from rerankq.jobs import TERMINAL, JobRecord, JobState
from rerankq.jobstore import JobStore
from rerankq.settings import Settings

ENDED = ("succeeded", "failed", "cancelled", "expired")
logger = logging.getLogger(__name__)



class Jobs(Protocol):
    """What the output reads of a client: ended records and their results (``rerankq.client.RerankClient``)."""

    jobs: JobStore

    def result_of(self, record: JobRecord) -> dict[str, Any]: ...


class BatchRunner(Protocol):
    """The runner whose ended lines an ``Output`` writes (``rerankq.client.batches.runner.BatchRunner``): its
    place in the batch, and the lines that ended since the last flush."""

    batch_id: str
    settings: Settings
    redis: redis.Redis
    store: BatchStore
    s3: Any  # a boto3 S3 client (``rerankq.s3.make_client``)
    ended: dict[int, JobState | None]
    errors: set[int]

    @property
    def client(self) -> Jobs: ...

    def key(self, part: str) -> str: ...

    def check_lock(self) -> None: ...

    def inflight_entry(self, number: int) -> dict[str, Any]: ...

    def forget(self, number: int) -> None: ...


class Output:
    """Writes a runner's ended lines out (``flush``) and closes the batch (``finalize``)."""

    def __init__(self, runner: BatchRunner, record: BatchRecord) -> None:
        self.runner = runner
        self.record = record
        self.prefix = record.output_uri if record.output_uri.endswith("/") else record.output_uri + "/"
        self.last = time.monotonic()
        self.live = {"queued": 0, "running": 0}

    def count(self, queued: int, running: int) -> None:
        """Publish the counts: written lines (authoritative) plus ended lines not yet written."""
        self.live = {"queued": queued, "running": running}
        pending = dict.fromkeys(ENDED, 0)
        for state in self.runner.ended.values():
            pending[_outcome(state)] += 1
        pending["failed"] += len(self.runner.errors)  # invalid lines; cancelled / expired ones are few
        key = keys.batch_key(self.runner.settings, self.runner.batch_id)
        written = self.runner.redis.hmget(key, [f"e_{s}" for s in ENDED])
        counts = {s: int(w or 0) + pending[s] for s, w in zip(ENDED, written, strict=True)}
        self.runner.store.set_counts(self.runner.batch_id, {**counts, **self.live})

    def flush(self, force: bool) -> None:
        """Write out ended lines: when a part is full, ``part_interval_s`` has passed, or ``force``."""
        settings = self.runner.settings.batches
        while True:
            waiting = len(self.runner.ended) + len(self.runner.errors)
            due = force or waiting >= settings.part_lines or time.monotonic() - self.last >= settings.part_interval_s
            if not waiting or not due:
                return
            self._write_part(settings.part_lines)
            self.last = time.monotonic()

    def _write_part(self, size: int) -> None:
        runner = self.runner
        ended = sorted(runner.ended)[:size]
        errors = sorted(runner.errors)[:max(size - len(ended), 0)]
        results, failures, tally, pairs = self._lines(ended)
        for raw in runner.redis.hmget(runner.key("errors"), [str(n) for n in errors]) if errors else []:
            line = json.loads(raw or "{}")
            failures.append(line)
            tally[line["state"]] += 1
        failures.sort(key=lambda line: line["line"])
        parts = {"results": results, "errors": failures}
        numbers = dict(zip(("results", "errors"), runner.redis.hmget(
            keys.batch_key(runner.settings, runner.batch_id), ["parts_results", "parts_errors"]), strict=True))
        runner.check_lock()
        written = []
        for kind, lines in parts.items():
            if lines:
                number = int(numbers[kind] or 0)
                uri = f"{self.prefix}{kind}/part-{number:05d}.jsonl"
                self._put(uri, "".join(json.dumps(line, separators=(",", ":")) + "\n" for line in lines))
                written.append({"kind": kind, "part": number, "lines": len(lines), "uri": uri,
                                **(self._vectors(lines, number) if kind == "results" and self.record.npy else {})})
        self._commit(ended, errors, written, tally, pairs)

    def _lines(self, ended: list[int]) -> tuple[list[dict[str, Any]], list[dict[str, Any]], dict[str, int], int]:
        runner = self.runner
        entries = [runner.inflight_entry(n) for n in ended]
        records = runner.client.jobs.records([e["job_id"] for e in entries])
        results, failures, tally, pairs = [], [], dict.fromkeys(ENDED, 0), 0
        for number, entry, record in zip(ended, entries, records, strict=True):
            line = self._line(number, entry, record)
            tally[line["state"] if "error" in line else "succeeded"] += 1
            if "error" in line:
                failures.append(line)
            else:
                usage = line.get("usage", {})  # an embedding line's inputs count as its pairs (the rate shown)
                pairs += int(usage.get("pairs", usage.get("inputs", 0)))
                results.append(line)
        return results, failures, tally, pairs

    def _line(self, number: int, entry: dict[str, Any], record: JobRecord | None) -> dict[str, Any]:
        custom_id, job_id = entry.get("custom_id"), entry["job_id"]
        if record is None:
            return error_line(custom_id, number, job_id, "failed", "record_missing", "the job's record is gone")
        if record.state == JobState.SUCCEEDED:
            try:
                return {"custom_id": custom_id, "line": number, **self.runner.client.result_of(record)}
            except (JobFailed, PermanentError) as exc:
                return error_line(custom_id, number, job_id, "failed", "result_unreadable", str(exc))
        if record.state not in TERMINAL:  # a job that outlived the batch's end (``BatchRunner._end``)
            return error_line(custom_id, number, job_id, "failed", "not_finished",
                              f"still {record.state} when the batch ended")
        state = _outcome(record.state)
        return error_line(custom_id, number, job_id, state, state, record.error)

    def _vectors(self, lines: list[dict[str, Any]], number: int) -> dict[str, Any]:
        """A results part's ``.npy`` files and index, written before the part is recorded (like the part)."""
        files, index = vectors.part_files(lines, f"part-{number:05d}")
        if not files:
            return {}
        for name, data in files.items():
            self._put(f"{self.prefix}results/{name}", data, "application/octet-stream")
        self._put(f"{self.prefix}results/part-{number:05d}.index.jsonl", index)
        return {"npy": [f"{self.prefix}results/{name}" for name in files],
                "index": f"{self.prefix}results/part-{number:05d}.index.jsonl"}

    def _put(self, uri: str, body: str | bytes, content_type: str = "application/x-ndjson") -> None:
        bucket, key = s3.split_uri(uri)
        data = body.encode() if isinstance(body, str) else body
        with s3.translate_errors(uri):
            self.runner.s3.put_object(Bucket=bucket, Key=key, Body=data, ContentType=content_type)

    def _commit(self, ended: list[int], errors: list[int], written: list[dict[str, Any]], tally: dict[str, int],
                pairs: int) -> None:
        """After the parts are in S3: their lines leave the working keys and are counted, in one transaction."""
        runner = self.runner
        key = keys.batch_key(runner.settings, runner.batch_id)
        pipe = runner.redis.pipeline(transaction=True)
        if ended:
            pipe.hdel(runner.key("inflight"), *[str(n) for n in ended])
        if errors:
            pipe.hdel(runner.key("errors"), *[str(n) for n in errors])
        for state, n in tally.items():
            if n:
                pipe.hincrby(key, f"e_{state}", n)
        pipe.hincrby(key, "pairs_done", pairs)
        for part in written:
            pipe.hincrby(key, f"parts_{part['kind']}", 1)
            pipe.rpush(runner.key("parts"), json.dumps(part))
        pipe.expire(runner.key("parts"), runner.settings.batches.retention_s)
        for n in ended:  # the jobs' records live as long as the batch's
            pipe.expire(keys.job_key(runner.settings, runner.inflight_entry(n)["job_id"]),
                        runner.settings.batches.retention_s)
        pipe.execute()
        for n in ended:
            runner.forget(n)
        runner.errors.difference_update(errors)

    def finalize(self, state: BatchState) -> BatchState:
        """Write what is left and the manifest; the batch takes its final state; working keys go."""
        runner = self.runner
        if state == BatchState.COMPLETED:
            runner.store.move(runner.batch_id, (BatchState.IN_PROGRESS,), BatchState.FINALIZING)
        self.flush(force=True)
        self.count(0, 0)
        parts = [json.loads(p) for p in runner.redis.lrange(runner.key("parts"), 0, -1)]
        record = runner.store.get(runner.batch_id)
        manifest = {"batch_id": runner.batch_id, "state": state.value, "input_uri": record.input_uri,
                    "output_uri": self.prefix, "counts": record.counts, "created_at": record.created_at,
                    "finished_at": time.time(),
                    "parts": {kind: [p for p in parts if p["kind"] == kind] for kind in ("results", "errors")}}
        runner.check_lock()
        self._put(f"{self.prefix}manifest.json", json.dumps(manifest, indent=1))
        self._callback(record, state, manifest)
        runner.store.move(runner.batch_id, tuple(s for s in BatchState if not s.terminal), state,
                          finished_at=manifest["finished_at"], manifest_uri=f"{self.prefix}manifest.json")
        runner.redis.delete(*(runner.key(p) for p in ("inflight", "errors", "cids", "parts", "ended")))
        return state

    def _callback(self, record: BatchRecord, state: BatchState, manifest: dict[str, Any]) -> None:
        """The batch's completion event, written just before the batch takes its final state: a runner that dies
        in between writes it again when the batch resumes, under the same event id (receivers dedupe on it)."""
        if not record.callback_url:
            return
        runner = self.runner
        data = {**record.to_dict(), "state": state.value, "finished_at": manifest["finished_at"],
                "manifest_uri": f"{self.prefix}manifest.json"}
        seed = f"{keys.batch_key(runner.settings, runner.batch_id)}|{record.created_at}"
        event_id = "evt_" + hashlib.sha1(seed.encode()).hexdigest()[:32]
        try:
            Outbox(runner.settings, runner.redis).enqueue(runner.redis, record.callback_url, f"batch.{state.value}",
                                                          data, event_id=event_id)
        except CallbackRefused as exc:  # checked at submit; settings changed since: the batch ends all the same
            logger.warning("batch %s: callback not sent: %s", runner.batch_id, exc)


def _outcome(state: JobState | None) -> str:
    """The count an ended job's line goes to (a vanished record counts as failed)."""
    return state.value if state in (JobState.SUCCEEDED, JobState.CANCELLED, JobState.EXPIRED) and state else "failed"
