"""Running a batch: stream the input, keep a bounded number of jobs in flight, write parts as jobs end.

One runner per batch (a Redis lock with a token, renewed on every step). Everything it needs to resume lives
in Redis, so a runner that dies is replaced by another (its Celery message comes back after one lease) that
picks up where the last step left off:

- ``cursor`` / ``offset`` in the record: input lines read (and their byte offset); a chunk of lines is
  enqueued first and recorded after, so a crash in between re-reads it, and jobs whose record exists are not
  sent twice (job ids are ``{batch_id}-{line}``);
- ``inflight`` (line → job id, custom id) and ``errors`` (line → its error line): lines read and not yet
  written out; a part is written to S3 first, then one transaction removes its lines from both and counts
  them, so a crash in between writes the same part number again, over the first attempt, with those lines.

Every input line thus ends in exactly one line of one part: ``results/part-NNNNN.jsonl`` or
``errors/part-NNNNN.jsonl``.
"""

from __future__ import annotations

import json
import logging
import threading
import time
import uuid
from collections.abc import Iterator
from itertools import islice
from typing import Any

from rerankq import keys, s3
from rerankq.batches import BatchRecord, BatchState, BatchStore
from rerankq.client.batches.lines import Line, custom_id_of, error_line, parse_line, read_lines
from rerankq.client.batches.output import Output
from rerankq.client.client import RerankClient
from rerankq.errors import PermanentError
from rerankq.jobs import TERMINAL, JobState, as_state, text_of

logger = logging.getLogger(__name__)
SWEEP_S = 2.0  # every job in flight is read this often (counts; announcements lost with a dead runner)

# KEYS: lock. ARGV: token, ttl ms. 1 while this runner holds it.
_RENEW = """
if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('PEXPIRE', KEYS[1], ARGV[2]) end
return 0
"""


class Interrupted(Exception):
    """The process is shutting down: the runner stopped between steps; the batch resumes elsewhere."""


class LostLock(Exception):
    """Another runner holds the batch now (this one was presumed dead): stop without writing."""


class BatchRunner:
    """Runs one batch to its end (``run``), or until ``stop`` is set (``Interrupted``)."""

    def __init__(self, client: RerankClient, batch_id: str, stop: threading.Event | None = None) -> None:
        self.client = client
        self.settings = client.settings
        # the batch's shard (the only one, without shards)
        self.redis = client.redis if client.sharded is None else client.sharded.batch_home(batch_id).redis
        # Its jobs end on their own shards, each announcing it on that shard's ``ended`` list: heard through a
        # thread per shard (``FanIn``); with one Redis, popped here.
        self.ended_lists = (client.sharded.fanin(keys.batch_key(self.settings, batch_id, "ended"))
                            if client.sharded is not None else None)
        self.store = BatchStore(self.settings, self.redis)
        self.batch_id = batch_id
        self.stop = stop or threading.Event()
        self.s3 = s3.make_client(self.settings.s3_endpoint_url)
        self.token = uuid.uuid4().hex
        self.lock_ms = 3000 * max(self.settings.lease_s, 5)
        self._renew = self.redis.register_script(_RENEW)
        self.entries: dict[int, dict[str, Any]] = {}  # line → {"job_id", "custom_id"}: in flight or ended
        self.inflight: set[int] = set()  # lines whose job has not ended
        self.ended: dict[int, JobState | None] = {}  # lines whose job ended, not yet written out
        self.by_key: dict[str, int] = {}  # job record key → line, for the ``ended`` announcements
        self._next_sweep = 0.0
        self.errors: set[int] = set()  # lines whose error line waits in Redis
        self.cursor, self.offset, self.input_done = 0, 0, False
        self._reader: Iterator[tuple[bytes, int]] | None = None
        self.record: BatchRecord | None = None
        self.out: Output | None = None

    def key(self, part: str) -> str:
        return keys.batch_key(self.settings, self.batch_id, part)

    # the lock ---------------------------------------------------------------------------------------
    def acquire(self, wait_s: float | None = None) -> bool:
        """Take the batch's lock, waiting up to one lock lifetime for a dead runner's lock to lapse."""
        deadline = time.monotonic() + (self.lock_ms / 1000 + 2 if wait_s is None else wait_s)
        while not self.redis.set(self.key("lock"), self.token, nx=True, px=self.lock_ms):
            if time.monotonic() > deadline or self.stop.wait(0.5):
                return False
        return True

    def check_lock(self) -> None:
        if not self._renew(keys=[self.key("lock")], args=[self.token, self.lock_ms]):
            raise LostLock(f"batch {self.batch_id}: another runner holds it now")

    def release(self) -> None:
        self.redis.eval("if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) end "
                        "return 0", 1, self.key("lock"), self.token)

    # running ----------------------------------------------------------------------------------------
    def run(self) -> BatchState | None:
        """Run the batch to its end; None when another runner has it."""
        if not self.acquire():
            logger.info("batch %s: another runner holds it", self.batch_id)
            return None
        try:
            self.record = self.store.get(self.batch_id)
            if self.record.state.terminal:
                return self.record.state
            self.out = Output(self, self.record)
            if self.record.state == BatchState.VALIDATING and not self._validate():
                return BatchState.FAILED
            self._resume()
            logger.info("batch %s: running from line %d (%d in flight)", self.batch_id, self.cursor + 1,
                        len(self.inflight))
            return self._loop()
        finally:
            if self.ended_lists is not None:
                self.ended_lists.close()
            self.release()

    def _validate(self) -> bool:
        """Count the input's lines (streamed); an unreadable input fails the batch."""
        assert self.record is not None
        try:
            total = sum(1 for _ in read_lines(self.s3, self.record.input_uri))
        except PermanentError as exc:
            self.store.move(self.batch_id, (BatchState.VALIDATING,), BatchState.FAILED, error=str(exc),
                            finished_at=time.time())
            logger.warning("batch %s failed: %s", self.batch_id, exc)
            return False
        self.check_lock()
        self.store.set_counts(self.batch_id, {"total": total})
        self.store.move(self.batch_id, (BatchState.VALIDATING,), BatchState.IN_PROGRESS, started_at=time.time())
        self.record.counts["total"] = total
        return True

    def _resume(self) -> None:
        raw = self.redis.hgetall(keys.batch_key(self.settings, self.batch_id))
        data = {text_of(k): text_of(v) for k, v in raw.items()}
        self.cursor, self.offset = int(data.get("cursor", 0)), int(data.get("offset", 0))
        self.input_done = data.get("input_done") == "1"
        self.entries = {int(k): json.loads(v) for k, v in self.redis.hgetall(self.key("inflight")).items()}
        self.inflight = set(self.entries)  # those that ended are found again by the first ``_sweep``
        self.by_key = {keys.job_key(self.settings, e["job_id"]): n for n, e in self.entries.items()}
        self.errors = {int(k) for k in self.redis.hkeys(self.key("errors"))}

    def _loop(self) -> BatchState:
        assert self.out is not None
        while True:
            if self.stop.is_set():
                raise Interrupted(self.batch_id)
            self.check_lock()
            state, expires = self.redis.hmget(keys.batch_key(self.settings, self.batch_id), ["state", "expires_at"])
            if state == b"cancelling":
                return self._end(BatchState.CANCELLED)
            if expires and time.time() >= float(expires):
                return self._end(BatchState.EXPIRED)
            if not self.input_done:
                self._top_up()
            self._collect(wait=bool(self.inflight))
            # Every line read and none in flight: nothing more can join the last part, so it goes out now
            # (waiting for part_interval_s would only spin this loop).
            self.out.flush(force=self.input_done and not self.inflight)
            if self.input_done and not self.inflight and not self.ended and not self.errors:
                return self.out.finalize(BatchState.COMPLETED)

    # reading and enqueueing -------------------------------------------------------------------------
    def _lines(self, n: int) -> list[tuple[bytes, int]]:
        assert self.record is not None
        if self._reader is None:
            self._reader = read_lines(self.s3, self.record.input_uri, self.offset)
        got = list(islice(self._reader, n))
        if len(got) < n:
            self.input_done, self._reader = True, None
        return got

    def _top_up(self) -> None:
        room = self.settings.batches.max_in_flight - len(self.inflight)
        if room < min(self.settings.batches.chunk, self.settings.batches.max_in_flight) // 2:
            return
        assert self.record is not None
        defaults = {"priority": self.record.priority, "model": self.record.model,
                    "expires_at": self.record.expires_at}
        lines = []
        for raw, end in self._lines(min(room, self.settings.batches.chunk)):
            self.cursor += 1
            lines.append(parse_line(raw, self.cursor, self.settings,
                                    {**defaults, "job_id": f"{self.batch_id}-{self.cursor}"}))
            self.offset = end
        self._enqueue(self._dedupe(lines))

    def _dedupe(self, lines: list[Line]) -> list[Line]:
        """A ``custom_id`` seen on an earlier line makes this line an error line."""
        named = [line for line in lines if line.custom_id is not None and line.job is not None]
        if not named:
            return lines
        pipe = self.redis.pipeline(transaction=False)
        for line in named:
            pipe.hsetnx(self.key("cids"), str(line.custom_id), line.number)
            pipe.hget(self.key("cids"), str(line.custom_id))
        found = pipe.execute()
        for line, first in zip(named, found[1::2], strict=True):
            if int(first) != line.number:
                line.job, line.code = None, "duplicate_custom_id"
                line.error = f"custom_id: {line.custom_id!r} is also on line {int(first)}"
        return lines

    def _enqueue(self, lines: list[Line]) -> None:
        jobs = [line.job for line in lines if line.job is not None]
        if jobs:
            self.client.enqueue(jobs, notify=self.key("ended"))
        pipe = self.redis.pipeline(transaction=True)
        for line in lines:
            if line.job is not None:
                entry = {"job_id": line.job["job_id"], "custom_id": line.custom_id}
                self.entries[line.number] = entry
                self.by_key[keys.job_key(self.settings, entry["job_id"])] = line.number
                self.inflight.add(line.number)
                pipe.hset(self.key("inflight"), str(line.number), json.dumps(entry))
            else:
                self.errors.add(line.number)
                pipe.hset(self.key("errors"), str(line.number), json.dumps(error_line(
                    line.custom_id, line.number, None, line.state, line.code, line.error)))
        pipe.hset(keys.batch_key(self.settings, self.batch_id),
                  mapping={"cursor": self.cursor, "offset": self.offset, "input_done": int(self.input_done)})
        for part in ("inflight", "errors", "cids", "ended"):
            pipe.expire(self.key(part), self.settings.batches.retention_s)
        pipe.execute()

    def inflight_entry(self, number: int) -> dict[str, Any]:
        return self.entries[number]

    def forget(self, number: int) -> None:
        """A line written out."""
        entry = self.entries.pop(number, None)
        if entry is not None:
            self.by_key.pop(keys.job_key(self.settings, entry["job_id"]), None)
        self.ended.pop(number, None)

    # watching jobs ----------------------------------------------------------------------------------
    def _collect(self, wait: bool) -> None:
        """Move the jobs that ended from ``inflight`` to ``ended``: as their records announce it on the batch's
        ``ended`` list (``JobStore.create_many(notify=)``), and by reading every job in flight now and then (the
        queued / running counts; announcements a dead runner had taken)."""
        if time.monotonic() >= self._next_sweep:
            self._sweep()
        found: list[Any]
        if self.ended_lists is not None:  # several shards: heard through a thread per shard
            found = [e for _, entries in self.ended_lists.get(0.5 if wait and self.inflight else 0) for e in entries]
        else:
            found = self.redis.lpop(self.key("ended"), 1000) or []  # type: ignore[assignment]
        if not found and wait and self.inflight and self.ended_lists is None:
            popped = self.redis.blpop([self.key("ended")], timeout=0.5)
            found = [popped[1]] if popped else []
        for item in found:
            state, _, key = text_of(item).partition("\n")[0].partition(" ")
            number = self.by_key.get(key)
            if number is not None and number in self.inflight:
                self.inflight.discard(number)
                self.ended[number] = as_state(state)

    def _sweep(self) -> None:
        lines = sorted(self.inflight)
        states = self.client.jobs.states([self.entries[n]["job_id"] for n in lines]) if lines else []
        for number, state in zip(lines, states, strict=True):
            if state is None or state in TERMINAL:
                self.ended[number] = state
                self.inflight.discard(number)
        assert self.out is not None
        self.out.count(queued=sum(s == JobState.QUEUED for s in states),
                       running=sum(s == JobState.RUNNING for s in states))
        self._next_sweep = time.monotonic() + SWEEP_S

    def _end(self, state: BatchState) -> BatchState:
        """Cancel or expire: stop reading, let the jobs in flight end (cancelled ones at once), give every
        line not yet read an error line, write everything out."""
        assert self.out is not None
        if state == BatchState.CANCELLED:
            for number in self.inflight:
                self.client.jobs.cancel(self.entries[number]["job_id"])
        deadline = time.monotonic() + 10 * max(self.settings.lease_s, 5)
        while self.inflight and time.monotonic() < deadline:
            self.check_lock()
            self._collect(wait=True)  # expired jobs end as they are read past the window (``JobStore.states``)
            self.out.flush(force=False)
        code = state.value
        for number in sorted(self.inflight):  # still running after all that time: not waited for
            self.ended[number] = None
            logger.warning("batch %s: line %d (job %s) did not end in time", self.batch_id, number,
                           self.entries[number]["job_id"])
        self.inflight.clear()
        while not self.input_done:
            self._unread(code)
            self.out.flush(force=False)
        return self.out.finalize(state)

    def _unread(self, code: str) -> None:
        """The next chunk of unread lines, as error lines with ``code`` (``cancelled`` / ``expired``)."""
        lines = []
        for raw, end in self._lines(self.settings.batches.chunk):
            self.cursor += 1
            self.offset = end
            lines.append(Line(self.cursor, custom_id_of(raw), error=f"the batch was {code} before this line ran",
                              state=code, code=code))
        self._enqueue(lines)
