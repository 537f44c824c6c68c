"""The per-process runtime: one model, a small intake of jobs, and two threads that batch across jobs.

Celery hands each job to ``Runtime.submit`` from a task thread and that thread waits on the returned
future, so the message is acknowledged only after the job's record is final (``acks_late``) and Flower
sees each job's real runtime. Meanwhile:

- the *preparing* thread forms a round (``rerankq.worker.intake.Intake``): it opens the intake (the Celery
  consumer fetches only while it is open, see ``rerankq.worker.intake.IntakeGate``), takes what arrives within
  ``batch.flush_interval_ms``, and for as long after that as the scorer is still busy with more than its last
  batch (at most ``batch.max_jobs``: under load rounds fill up, an idle worker answers a lone job at once),
  marks those jobs running, and has the round engine (``rerankq.models.engine``) look up, resolve, prepare and
  plan them. It forms the next round only once the scorer has taken the last one, so a worker never holds more
  than one round in the scorer and one being formed: a ``high`` job submitted now is in the next round some
  worker forms, ahead of every waiting ``normal`` or ``low`` one;
- the *scoring* thread has the engine run the round's forward passes, and ends each job as soon as the pass
  that scored its last pair returns.

The runtime itself keeps only the threads, the handoff between them and the Celery boundary: records marked
running, outcomes written (``rerankq.worker.finishing``), metrics, media retries and cancellations.

A job whose previous holder died runs in a round of its own, so that a poison job cannot take innocent
jobs down with it twice. A job whose media failed only transiently waits (``media.job_retries``, backoff)
and is tried again before the failure becomes a per-document error. Every failure is caught per job.
"""

from __future__ import annotations

import json
import logging
import queue
import threading
import time
from collections.abc import Callable, Collection, Sequence
from concurrent.futures import Future
from dataclasses import dataclass, field
from typing import Any

from rerankq import s3
from rerankq.jobs import JobState
from rerankq.jobstore import JobStore
from rerankq.media.resolver import MediaResolver
from rerankq.models.contract import RerankModel, instruction_for
from rerankq.models.engine import JobInput, JobOutcome, Pass, Plan, Recalled, RoundEngine, failed
from rerankq.results import ResultStore
from rerankq.schema import Job
from rerankq.settings import Settings, knob
from rerankq.worker.finishing import Finisher
from rerankq.worker.held import HeldJob, engine_input
from rerankq.worker.intake import Intake
from rerankq.worker.metrics import Metrics
from rerankq.worker.scorecache import ScoreCache

logger = logging.getLogger(__name__)

PROGRESS_S = 1.0  # a running job's pairs_done is written at most this often, first this long after it started
CANCELS_FRESH_S = 0.1  # the cancels counter is read at most this often


@dataclass
class Round:
    """A round handed from the preparing thread to the scoring thread: the engine's plan, the jobs it holds
    (by id), and the jobs that failed before the engine saw them."""

    plan: Plan
    held: dict[str, HeldJob]
    failed: list[tuple[HeldJob, JobOutcome]] = field(default_factory=list)
    cancels: int | None = None  # the cancels counter read before its jobs started; None: not known


class Runtime:
    """Owns the model. ``start()`` the threads, ``submit(job)`` from task threads, ``stop()`` at exit."""

    def __init__(self, model: RerankModel[Any], settings: Settings, worker: str, resolver: MediaResolver | None = None,
                 metrics: Metrics | None = None, store: JobStore | None = None) -> None:
        self.model = model
        self.settings = settings
        self.worker = worker
        self.resolver = resolver or MediaResolver(settings, model.preprocessor)
        self.metrics = metrics or Metrics(model.name)
        self.metrics.watch_sharing(model)
        self.store = store or JobStore(settings)
        self._cancels_seen: tuple[int | None, float] = (None, 0.0)  # the cancels counter and when it was read
        self.finisher = Finisher(model.name, settings.results, self.store, self.metrics,
                                 ResultStore(settings.s3_endpoint_url))
        cache = ScoreCache(settings.cache, self.metrics, self.store.redis) if settings.cache.active else None
        self.engine = RoundEngine(model, self.resolver, settings.batch, cache, settings.media.exif_transpose,
                                  f" ({knob('scoring.max_length')})")
        self.intake = Intake(settings.batch, self._round_ready)  # what this worker holds before it runs
        self.transit = self.intake.transit  # taken by the consumer, not yet submitted (``rerankq.worker.intake``)
        self._handoff: queue.Queue[Round] = queue.Queue(maxsize=1)
        self._scorer_busy_until = 0.0  # monotonic time the scorer should finish its round (0: idle)
        self._batch_s = 0.0  # moving average of a forward pass, seconds
        self._prepare_s_per_job = 0.0  # moving average of preparing a job, seconds
        self._stop = threading.Event()
        self._idle = threading.Event()  # the scorer holds no round
        self._idle.set()
        self._last_alone = False
        self._threads = [threading.Thread(target=self._loop, args=(f, ), name=n, daemon=True)
                         for f, n in ((self._prepare_next, "rerankq-prepare"), (self._score_next, "rerankq-score"))]

    def start(self) -> Runtime:
        for thread in self._threads:
            thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()

    def submit(self, job: Job, redelivered: bool = False, task_id: str | None = None,
               recalled: Recalled | None = None, failure: str | None = None) -> HeldJob:
        """Queue a job; its ``future`` resolves once its record is final (see ``HeldJob``). A redelivered job
        whose record says it is still running lost its worker: it runs alone. ``task_id``: its message's.
        ``recalled``: what its recall stage kept; ``failure``: why it fails without running (recall failed)."""
        solo = redelivered and self.store.peek(job.id) == JobState.RUNNING
        held = HeldJob(job=job, future=Future(), solo=solo, recalled=recalled, failure=failure)
        self.intake.submit(held, task_id)
        return held

    def accepting(self) -> bool:
        """Whether the consumer may fetch another message now: only while a round is being formed and it has
        room. Called by the Celery consumer's thread (``rerankq.worker.intake.IntakeGate``)."""
        return self.intake.accepting()

    def _loop(self, step: Callable[[], None]) -> None:
        while not self._stop.is_set():
            try:
                step()
            except Exception:  # a bug must not kill the thread: the jobs in hand are failed by ``step``
                logger.exception("runtime step failed")

    def _round_ready(self, jobs: int) -> bool:
        """The flush policy, once the flush interval has passed: close the round when preparing it would take
        about as long as the scorer still needs for its own (both estimated from recent rounds), so the next
        round is ready when the scorer is; an idle scorer gets it at once."""
        return time.monotonic() + self._prepare_s_per_job * jobs >= self._scorer_busy_until

    # preparing ---------------------------------------------------------------------------------------------
    def _prepare_next(self) -> None:
        self._handoff.join()  # the scorer has taken the last round: form the next one now, not earlier
        held = self.intake.take()
        if not held:
            return
        alone = len(held) == 1 and held[0].solo
        if alone or self._last_alone:
            # A lone job is marked running only once the scorer is idle, and nothing is marked running while it
            # is scored: if the worker dies then, that death is charged to it alone (max_deliveries), never to a
            # job that merely waited in the next round.
            while not self._idle.wait(0.2) and not self._stop.is_set():
                pass
        self._last_alone = alone
        t0 = time.monotonic()
        try:
            round_ = self._prepare(held)
            per_job = (time.monotonic() - t0) / len(held)
            self._prepare_s_per_job = 0.8 * self._prepare_s_per_job + 0.2 * per_job if self._prepare_s_per_job \
                else per_job
        except Exception as exc:  # a media-layer or planner bug: these jobs fail, the worker carries on
            logger.exception("preparing %d jobs failed", len(held))
            error = f"worker error while preparing: {type(exc).__name__}: {exc}"
            round_ = Round(Plan([], [], []), {}, [(h, failed(self._input(h), error)) for h in held])
        self._handoff.put(round_)

    def _prepare(self, held: list[HeldJob]) -> Round:
        cancels = self._cancels()
        held = self._mark_running(held)
        missing = {**self._missing_result_buckets(held), **{h.job_id: h.failure for h in held if h.failure}}
        fail_fast = [(h, failed(self._input(h), missing[h.job_id])) for h in held if h.job_id in missing]
        live = [h for h in held if h.job_id not in missing]
        plan = self.engine.prepare([self._input(h) for h in live])
        self.metrics.media.observe(plan.media_s)
        self.metrics.cache_hits.inc(plan.cache_hits)
        self.metrics.cache_pairs_saved.inc(plan.cache_hits)
        self.metrics.cache_misses.inc(plan.cache_misses)
        by_id = {h.job_id: h for h in live}
        for job in plan.jobs:
            if job.retry is not None:
                self._retry_later(by_id.pop(job.job.id), job.retry)
        # Documents that failed already, or came from the cache, are done too (a job with nothing left to score
        # ends at once: its outcome sets pairs_done).
        self._report_progress([(by_id[j.job.id], j.settled) for j in plan.jobs
                               if j.job.id in by_id and j.settled and j.pairs and not j.error])
        return Round(plan, by_id, fail_fast, cancels)

    def _input(self, held: HeldJob) -> JobInput:
        media = self.settings.media
        return engine_input(held, self.settings.limits, instruction_for(self.engine.model, self.settings.instruction),
                            retry_media=held.media_retries < media.job_retries)

    def _retry_later(self, held: HeldJob, failure: Exception) -> None:
        """A medium that failed only transiently: put the job back and try it again after a backoff, up to
        ``media.job_retries`` times; after that its failures become per-document errors."""
        delay = self.settings.media.job_retry_backoff_s * 2 ** held.media_retries
        held.media_retries += 1
        if not self.store.requeue(held.job_id, held.fence, f"{failure} (retrying in {delay:.1f} s)"):
            held.finished = True
            held.future.set_result(None)  # another attempt holds it now
            return
        logger.info("job %s: %s; retrying in %.1f s", held.job_id, failure, delay)
        self.metrics.retries.inc()
        self.intake.delay(held, delay)

    def _missing_result_buckets(self, held: list[HeldJob]) -> dict[str, str]:
        """Fail fast: a job whose ``result_uri`` bucket does not exist fails before its media are fetched and
        its pairs scored, not after (a bucket found once is not checked again)."""
        out = {}
        for h in held:
            if h.job.result_uri:
                bucket = s3.split_uri(h.job.result_uri)[0]
                if self.finisher.results.bucket_exists(bucket) is False:
                    out[h.job_id] = f"result_uri: bucket {bucket!r} does not exist"
        return out

    def _mark_running(self, held: list[HeldJob]) -> list[HeldJob]:
        """Take the jobs for this attempt; settle (and drop) those that are not to run."""
        found = self.store.start_many([(h.job_id, h.job.units, h.solo) for h in held], self.worker)
        kept = []
        for h, started in zip(held, found, strict=True):
            if started.state == JobState.RUNNING:
                h.fence, h.created_at, h.started_at = started.fence, started.created_at, time.time()
                h.started_mono = time.monotonic()
                self.metrics.queue_wait.observe(max(h.started_at - started.created_at, 0.0))
                kept.append(h)
                continue
            logger.info("job %s not run: %s", h.job_id, started.state or "record missing")
            if started.ended_now and started.state is not None:
                self.metrics.job_ended(started.state)
            h.finished = True
            h.future.set_result(started.state)
        return kept

    # scoring -----------------------------------------------------------------------------------------------
    def _score_next(self) -> None:
        try:
            round_ = self._handoff.get(timeout=0.5)
        except queue.Empty:
            return
        self._idle.clear()  # before task_done: the preparing thread, woken by it, must see the scorer busy
        self._handoff.task_done()
        self.finisher.finish(round_.failed)
        self._scorer_busy_until = time.monotonic() + len(round_.plan.batches) * self._batch_s
        try:
            for done in self.engine.score(round_.plan, keep=lambda ids: self._still_wanted(round_, ids)):
                self._passed(round_, done)
        except Exception as exc:
            logger.exception("scoring a round failed")
            error = f"worker error while scoring: {type(exc).__name__}: {exc}"
            self.finisher.finish([(h, failed(self._input(h), error)) for h in round_.held.values() if not h.finished])
        finally:
            self._scorer_busy_until = 0.0
            self._idle.set()

    def _passed(self, round_: Round, done: Pass) -> None:
        """One pass's figures to metrics and progress, and the jobs it completed to their end."""
        if done.pairs:
            self._batch_s = 0.8 * self._batch_s + 0.2 * done.seconds if self._batch_s else done.seconds
            self._scorer_busy_until = time.monotonic() + done.left * self._batch_s
            m = self.metrics
            m.scoring.observe(done.seconds)
            m.batch_pairs.observe(len(done.pairs))
            m.batch_jobs.observe(done.jobs)
            m.padding.observe(done.padding)
            m.pairs_scored.inc(len(done.pairs) - done.failed)
            if self.settings.batch.record_path:
                record_pass(self.settings.batch.record_path, done.pairs)
            ended = {o.job.id for o in done.finished}  # their pairs_done comes with their outcome
            self._report_progress([(round_.held[i], n) for i, n in done.scored.items() if i not in ended])
        self.finisher.finish([(round_.held[o.job.id], o) for o in done.finished])

    def _report_progress(self, done: list[tuple[HeldJob, int]]) -> None:
        """Add pairs done to the jobs' records, each job at most once per ``PROGRESS_S`` and not in its first
        ``PROGRESS_S`` (a job that ends sooner says ``pairs_done`` with its outcome: a progress write for it would
        be Redis work nobody sees); the rest is kept and added later."""
        now, due = time.monotonic(), []
        for held, n in done:
            held.unreported += n
            if now - max(held.reported_at, held.started_mono) >= PROGRESS_S and held.unreported:
                due.append((held, held.unreported))
        if not due:
            return
        try:
            self.store.add_progress({held.attempt: n for held, n in due})
        except Exception as exc:  # progress is advisory: a Redis blip must not fail the round's jobs
            logger.warning("progress of %d jobs not recorded: %s", len(due), exc)
            return
        for held, n in due:
            held.unreported -= n
            held.reported_at = now

    def _cancels(self) -> int | None:
        """The cancels counter, read at most every ``CANCELS_FRESH_S`` (a cancel seen that much later costs at
        most a pass: committing refuses a cancelled job)."""
        value, at = self._cancels_seen
        if value is not None and time.monotonic() - at < CANCELS_FRESH_S:
            return value
        try:
            value = self.store.cancels()
        except Exception as exc:  # a Redis blip: every pass of the round looks at its jobs' states instead
            logger.warning("could not read the cancels counter: %s", exc)
            return None
        self._cancels_seen = (value, time.monotonic())
        return value

    def _still_wanted(self, round_: Round, job_ids: list[str]) -> Collection[str]:
        """Skip work whose caller went away: jobs cancelled since the round was formed are settled, unscored.
        Their states are read only when the cancels counter moved since the round's jobs started."""
        cancels = self._cancels()
        if cancels is not None and cancels == round_.cancels:
            return job_ids
        try:
            states = dict(zip(job_ids, self.store.peek_many(job_ids), strict=True))
        except Exception as exc:  # a Redis blip: score them; finishing refuses any that were cancelled
            logger.warning("could not check %d jobs for cancellation: %s", len(job_ids), exc)
            return job_ids
        for job_id, state in states.items():
            if state in (JobState.CANCELLED, None):
                self.finisher.settle(round_.held[job_id], state)
        return [i for i in job_ids if not round_.held[i].finished]


def record_pass(path: str, pairs: Sequence[tuple[str, int]]) -> None:
    """Append the pass's pairs, as (job id, document index), to ``path`` (``batch.record_path``)."""
    with open(path, "a") as out:
        out.write(json.dumps({"pairs": [list(p) for p in pairs]}) + "\n")
