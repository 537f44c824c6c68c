"""The per-process runtime: one model, a small intake of jobs, and two threads that batch across jobs.

Celery hands each job to ``Runtime.submit`` from a task thread and that thread waits on the returned
future, so the message is acknowledged only after the job's record is final (``acks_late``) and Flower
sees each job's real runtime. Meanwhile:

- the *preparing* thread forms a round (``rerankq.worker.intake.Intake``): it opens the intake (the Celery
  consumer fetches only while it is open, see ``rerankq.worker.intake.IntakeGate``), takes what arrives within
  ``batch.flush_interval_ms``, and for as long after that as the scorer is still busy with more than its last
  batch (at most ``batch.max_jobs``: under load rounds fill up, an idle worker answers a lone job at once),
  marks those jobs running, resolves their media, prepares their pairs and plans token-budgeted batches over
  all of them. It forms the next round only once the scorer has taken the last
  one, so a worker never holds more than one round in the scorer and one being formed: a ``high`` job
  submitted now is in the next round some worker forms, ahead of every waiting ``normal`` or ``low`` one;
- the *scoring* thread runs the forward passes of one round, scatters scores back to their jobs, and ends
  each job as soon as its last pair is scored.

A job whose previous holder died runs in a round of its own, so that a poison job cannot take innocent
jobs down with it twice. A job whose media failed only transiently waits (``media.job_retries``, backoff)
and is tried again before the failure becomes a per-document error. Every failure is caught per job.
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from collections.abc import Callable
from concurrent.futures import Future
from typing import Any

from rerankq.media.resolver import MediaResolver
from rerankq.models.batching import padding_ratio, plan_with_prefixes
from rerankq.models.contract import RerankModel, own_lengths, prefix_marks
from rerankq.worker.caching import RoundCache
from rerankq.worker.finishing import Finisher
from rerankq.worker.intake import Intake
from rerankq.worker.metrics import Metrics
from rerankq.worker.rounds import (
    JobRun,
    Round,
    Unit,
    distinct_jobs,
    prepare_units,
    record_batch,
    resolve_media,
    score_isolating,
    transient_failure,
)

from rerankq import s3
from rerankq.jobs import JobState
from rerankq.jobstore import JobStore
from rerankq.schema import RerankJob
from rerankq.settings import Settings

logger = logging.getLogger(__name__)


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
        self.finisher = Finisher(model.name, settings, self.store, self.metrics)
        self.cache = RoundCache(settings, model, self.resolver, self.metrics, self.store.redis)
        self.intake = Intake(settings, self._round_ready)  # what this worker holds before it runs
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

    def submit(self, job: RerankJob, redelivered: bool = False, task_id: str | None = None) -> JobRun:
        """Queue a job; its ``future`` resolves once its record is final (see ``JobRun``). A redelivered job
        whose record says it is still running lost its worker: it runs alone. ``task_id``: its message's."""
        solo = redelivered and self.store.peek(job.id) == JobState.RUNNING
        run = JobRun(job=job, future=Future(), solo=solo)
        self.intake.submit(run, task_id)
        return run

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

    def _prepare_next(self) -> None:
        self._handoff.join()  # the scorer has taken the last round: form the next one now, not earlier
        runs = self.intake.take()
        if not runs:
            return
        alone = len(runs) == 1 and runs[0].solo
        if alone or self._last_alone:
            # A lone run is marked running only once the scorer is idle, and nothing is marked running while it
            # is scored: if the worker dies then, that death is charged to it alone (max_deliveries), never to a
            # job that merely waited in the next round.
            while not self._idle.wait(0.2) and not self._stop.is_set():
                pass
        self._last_alone = alone
        t0 = time.monotonic()
        try:
            round_ = self._prepare(runs)
            per_job = (time.monotonic() - t0) / len(runs)
            self._prepare_s_per_job = 0.8 * self._prepare_s_per_job + 0.2 * per_job if self._prepare_s_per_job \
                else per_job
        except Exception as exc:  # a media-layer or planner bug: these jobs fail, the worker carries on
            logger.exception("preparing %d jobs failed", len(runs))
            for run in runs:
                run.error = run.error or f"worker error while preparing: {type(exc).__name__}: {exc}"
            round_ = Round(runs, [], [])
        self._handoff.put(round_)

    def _prepare(self, runs: list[JobRun]) -> Round:
        runs = self._mark_running(runs)
        if not runs:
            return Round([], [], [])
        self._check_result_buckets(runs)
        live = [run for run in runs if not run.error]
        t0 = time.perf_counter()
        known = self.cache.before_media(live)  # pairs found in the score cache are neither fetched nor scored
        sides = resolve_media(live, self.resolver, self.settings.limits, known)
        media_s = time.perf_counter() - t0
        self.metrics.media.observe(media_s)
        self.cache.after_media(live, sides)
        kept = [run for run in runs if run.error]  # failed fast: they end with this round, unscored
        units: list[Unit] = []
        for run, job_sides in zip(live, sides, strict=True):
            run.media_s = media_s
            if self._retry_later(run, job_sides):
                continue
            kept.append(run)
            units += prepare_units(run, job_sides, self.model, self.settings.instruction)
        # Documents that failed already, or came from the cache, are done too: progress reaches pairs_total.
        self.store.add_progress({r.attempt: len(r.errors) + len(r.cached) for r in kept
                                 if (r.errors or r.cached) and not r.error})
        b = self.settings.batch
        pairs = [u.pair for u in units]  # a job's pairs may share a prefix (prepare_job): planned as suffixes
        return Round(kept, units, plan_with_prefixes([p.length for p in pairs], prefix_marks(pairs), b.max_tokens,
                                                     b.max_pairs))

    def _retry_later(self, run: JobRun, sides: list[Any]) -> bool:
        """A medium that failed only transiently: put the job back and try it again after a backoff, up to
        ``media.job_retries`` times; after that its failures become per-document errors."""
        failure = transient_failure(sides)
        media = self.settings.media
        if failure is None or run.media_retries >= media.job_retries:
            return False
        delay = media.job_retry_backoff_s * 2 ** run.media_retries
        run.media_retries += 1
        if not self.store.requeue(run.job_id, run.fence, f"{failure} (retrying in {delay:.1f} s)"):
            run.future.set_result(None)  # another attempt holds it now
            return True
        logger.info("job %s: %s; retrying in %.1f s", run.job_id, failure, delay)
        self.metrics.retries.inc()
        run.reset()
        self.intake.delay(run, delay)
        return True

    def _check_result_buckets(self, runs: list[JobRun]) -> None:
        """Fail fast: a job whose ``result_uri`` bucket does not exist fails before its media are fetched and
        its pairs scored, not after (a bucket found once is not checked again)."""
        for run in runs:
            if not run.job.result_uri:
                continue
            bucket = s3.split_uri(run.job.result_uri)[0]
            if self.finisher.results.bucket_exists(bucket) is False:
                run.error = f"result_uri: bucket {bucket!r} does not exist"

    def _mark_running(self, runs: list[JobRun]) -> list[JobRun]:
        """Take the jobs for this attempt; settle (and drop) those that are not to run."""
        found = self.store.start_many([(r.job_id, len(r.job.documents), r.solo) for r in runs], self.worker)
        kept = []
        for run, started in zip(runs, found, strict=True):
            if started.state == JobState.RUNNING:
                run.fence, run.created_at, run.started_at = started.fence, started.created_at, time.time()
                self.metrics.queue_wait.observe(max(run.started_at - started.created_at, 0.0))
                kept.append(run)
                continue
            logger.info("job %s not run: %s", run.job_id, started.state or "record missing")
            if started.ended_now and started.state is not None:
                self.metrics.job_ended(started.state)
            run.finished = True
            run.future.set_result(started.state)
        return kept

    # scoring -------------------------------------------------------------------------------------
    def _score_next(self) -> None:
        try:
            round_ = self._handoff.get(timeout=0.5)
        except queue.Empty:
            return
        self._idle.clear()  # before task_done: the preparing thread, woken by it, must see the scorer busy
        self._handoff.task_done()
        try:
            for i, batch in enumerate(round_.batches):
                t0 = time.monotonic()
                self._scorer_busy_until = t0 + (len(round_.batches) - i) * self._batch_s
                done = self._run_batch([round_.units[j] for j in batch])
                seconds = time.monotonic() - t0
                self._batch_s = 0.8 * self._batch_s + 0.2 * seconds if self._batch_s else seconds
                self.finisher.finish(done)  # a job ends as soon as its last pair is scored
        except Exception as exc:
            logger.exception("scoring a round failed")
            for run in round_.runs:
                run.error = run.error or f"worker error while scoring: {type(exc).__name__}: {exc}"
        self._scorer_busy_until = 0.0
        self.cache.write_back(round_.units)  # the round's fresh scores, one round trip; never raises
        try:
            self.finisher.finish(round_.runs)
        finally:
            self._idle.set()

    def _run_batch(self, units: list[Unit]) -> list[JobRun]:
        """One forward pass (split on failure); returns the jobs whose last pair it scored."""
        live = self._drop_cancelled(units)
        if not live:
            return []
        t0 = time.perf_counter()
        outcomes = score_isolating(lambda us: self.model.forward([u.pair for u in us]), live)
        seconds = time.perf_counter() - t0
        self.metrics.scoring.observe(seconds)
        self.metrics.batch_pairs.observe(len(live))
        self.metrics.batch_jobs.observe(distinct_jobs(live))
        own = own_lengths([u.pair for u in live])  # a suffix's padding is its own, the prefix is not padded
        self.metrics.padding.observe(padding_ratio(own, [list(range(len(live)))]))
        if self.settings.batch.record_path:
            record_batch(self.settings.batch.record_path, live)
        progress: dict[tuple[str, int], int] = {}
        for unit, score in outcomes:
            unit.run.scoring_s += seconds / len(live)
            if isinstance(score, BaseException):
                unit.run.errors[unit.index] = f"documents[{unit.index}]: scoring failed: {score}"
            else:
                unit.run.scores[unit.index] = score
                self.metrics.pairs_scored.inc()
            unit.run.pending -= 1
            progress[unit.run.attempt] = progress.get(unit.run.attempt, 0) + 1
        try:
            self.store.add_progress(progress)
        except Exception as exc:  # progress is advisory: a Redis blip must not fail the round's jobs
            logger.warning("progress of %d jobs not recorded: %s", len(progress), exc)
        return list({id(u.run): u.run for u in live if u.run.pending == 0}.values())

    def _drop_cancelled(self, units: list[Unit]) -> list[Unit]:
        """Skip work whose caller went away: pairs of jobs cancelled since the round was formed."""
        runs = {u.run.job_id: u.run for u in units if not u.run.finished}
        try:
            states = dict(zip(runs, self.store.states(list(runs)), strict=True))
        except Exception as exc:  # a Redis blip: score them; finishing refuses any that were cancelled
            logger.warning("could not check %d jobs for cancellation: %s", len(runs), exc)
            return units
        for job_id, state in states.items():
            if state in (JobState.CANCELLED, None):
                self.finisher.settle(runs[job_id], state)
        return [u for u in units if not u.run.finished]

