"""The per-process runtime: one model, a buffer of jobs, and two threads that batch across jobs.

Celery hands each job to ``Runtime.submit`` from a task thread and that thread waits on the returned
future, so the message is acknowledged only after the job's result is written (``acks_late``) and Flower
sees each job's real runtime. Meanwhile:

- the *preparing* thread takes every buffered job (waiting at most ``batch.flush_interval_ms`` after the
  first for company, at most ``batch.max_jobs``), marks them running, resolves their media concurrently,
  prepares their pairs and plans token-budgeted batches over all pairs of all of them (a *round*);
- the *scoring* thread runs the forward passes of one round while the next round is being prepared,
  scatters scores back to their jobs and writes each job's result and state.

The Celery consumer keeps running in the main thread throughout, so a long batch never makes the worker
look dead (broker connection, worker heartbeats for Flower).
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any

from reranker.batching import padding_ratio, plan_with_prefixes
from reranker.pipeline import PairPreparer
from reranker.sharing import plan_marks
from rerankq.errors import TransientError
from rerankq.jobs import JobStore, result_fields
from rerankq.results import ResultStore, result_location
from rerankq.settings import Settings
from workers.metrics import Metrics
from workers.rounds import JobRun, Round, Unit, distinct_jobs, prepare_units, resolve_media, score_isolating

logger = logging.getLogger(__name__)


def make_resolver(settings: Settings) -> Any:
    from reranker.resolver import MediaResolver

    return MediaResolver(settings)


class Runtime:
    """Owns the scorer. ``start()`` the threads, ``submit(job)`` from task threads, ``stop()`` at exit."""

    def __init__(self, scorer: Any, settings: Settings, worker: str, resolver: Any = None,
                 metrics: Metrics | None = None, store: JobStore | None = None) -> None:
        self.scorer = scorer
        self.settings = settings
        self.worker = worker
        self.resolver = resolver or make_resolver(settings)
        self.metrics = metrics or Metrics()
        self.metrics.watch_sharing(scorer)
        self.store = store or JobStore(settings)
        self.results = ResultStore(settings.s3_endpoint_url)
        self.preparer = PairPreparer(scorer.tokenizer, settings.scoring.max_length)
        self.pool = ThreadPoolExecutor(settings.batch.prepare_threads, thread_name_prefix="prepare")
        self._inbox: queue.Queue[JobRun] = queue.Queue()
        self._rounds: queue.Queue[Round | None] = queue.Queue(maxsize=1)  # one round prepared ahead
        self._stop = threading.Event()
        self._threads = [threading.Thread(target=self._loop, args=(f, ), name=n, daemon=True)
                         for f, n in ((self._prepare_next, "rerankq-prepare"), (self._score_next, "rerankq-score"))]

    def start(self) -> Runtime:
        for thread in self._threads:
            thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()

    def submit(self, job: dict[str, Any]) -> Future[str]:
        """Queue a job; the future resolves to its final state once its record is written."""
        run = JobRun(job=job, future=Future())
        self._inbox.put(run)
        return run.future

    def _loop(self, step: Any) -> None:
        while not self._stop.is_set():
            try:
                step()
            except Exception:  # a bug must not kill the thread: the jobs in hand are failed by ``step``
                logger.exception("runtime step failed")

    # preparing -----------------------------------------------------------------------------------
    def _take(self) -> list[JobRun]:
        """The next jobs: the first, then whatever arrives within the flush interval, up to ``max_jobs``.
        While the scorer still has a round waiting, keep collecting: a bigger round packs better and
        costs no latency, since it could not start earlier anyway."""
        try:
            first = self._inbox.get(timeout=0.5)
        except queue.Empty:
            return []
        runs = [first]
        deadline = time.monotonic() + self.settings.batch.flush_interval_ms / 1000
        while len(runs) < self.settings.batch.max_jobs:
            wait = deadline - time.monotonic()
            if wait <= 0:
                if not self._rounds.full():
                    break
                wait = 0.002
            try:
                runs.append(self._inbox.get(timeout=wait))
            except queue.Empty:
                continue
        return runs

    def _prepare_next(self) -> None:
        runs = self._take()
        if not runs:
            return
        try:
            round_ = self._prepare(runs)
        except Exception as exc:
            logger.exception("preparing %d jobs failed", len(runs))
            for run in runs:
                run.error = run.error or f"worker error while preparing: {exc}"
            round_ = Round(runs, [], [])
        self._rounds.put(round_)

    def _prepare(self, runs: list[JobRun]) -> Round:
        runs = self._mark_running(runs)
        t0 = time.perf_counter()
        sides = resolve_media(runs, self.resolver, self.settings.limits)
        media_s = time.perf_counter() - t0
        self.metrics.media.observe(media_s)
        units: list[Unit] = []
        for run, job_sides in zip(runs, sides, strict=True):
            run.media_s = media_s
            job_units = prepare_units(run, job_sides, self.preparer, self.settings.instruction, self.pool)
            if self.settings.scoring.share_prefix:
                self.scorer.share_prefix([u.pair for u in job_units])
            units += job_units
        # Documents that failed already are done too: progress reaches pairs_total when the job ends.
        self.store.add_progress({r.job_id: len(r.errors) for r in runs if r.errors and not r.error})
        b = self.settings.batch
        pairs = [u.pair for u in units]
        return Round(runs, units, plan_with_prefixes([p.length for p in pairs], plan_marks(pairs), b.max_tokens,
                                                     b.max_pairs))

    def _mark_running(self, runs: list[JobRun]) -> list[JobRun]:
        """Set runs running; drop (and settle) the cancelled and the expired ones."""
        found = self.store.start_many([r.job_id for r in runs], self.worker, [len(r.job["documents"]) for r in runs])
        now = time.time()
        kept = []
        for run, (state, created) in zip(runs, found, strict=True):
            if state == "running":
                run.started_at, run.created_at = now, created
                self.metrics.queue_wait.observe(max(now - created, 0.0))
                kept.append(run)
            else:
                logger.info("job %s skipped: %s", run.job_id, state or "record expired")
                self.metrics.jobs.labels(state or "expired").inc()
                run.future.set_result(state or "expired")
        return kept

    # scoring -------------------------------------------------------------------------------------
    def _score_next(self) -> None:
        try:
            round_ = self._rounds.get(timeout=0.5)
        except queue.Empty:
            return
        if round_ is None:
            return
        try:
            for batch in round_.batches:
                done = self._run_batch([round_.units[i] for i in batch])
                self._finish([run for run in done if not run.finished])  # do not wait for the whole round
        except Exception as exc:
            logger.exception("scoring a round failed")
            for run in round_.runs:
                run.error = run.error or f"worker error while scoring: {exc}"
        self._finish([run for run in round_.runs if not run.finished])

    def _run_batch(self, units: list[Unit]) -> list[JobRun]:
        """One forward pass (split on failure); returns the jobs whose last pair it scored."""
        live = self._drop_cancelled(units)
        if not live:
            return []
        t0 = time.perf_counter()
        outcomes = score_isolating(lambda us: self.scorer.forward([u.pair for u in us]), live)
        seconds = time.perf_counter() - t0
        lengths = [u.pair.suffix_length for u in live]
        self.metrics.scoring.observe(seconds)
        self.metrics.batch_pairs.observe(len(live))
        self.metrics.batch_jobs.observe(distinct_jobs(live))
        self.metrics.padding.observe(padding_ratio(lengths, [list(range(len(live)))]))
        progress: dict[str, int] = {}
        for unit, score in outcomes:
            unit.run.scoring_s += seconds / len(live)
            if isinstance(score, BaseException):
                unit.run.errors[unit.index] = f"documents[{unit.index}]: scoring failed: {score}"
            else:
                unit.run.scores[unit.index] = score
                self.metrics.pairs_scored.inc()
            unit.run.pending -= 1
            progress[unit.run.job_id] = progress.get(unit.run.job_id, 0) + 1
        self.store.add_progress(progress)
        return list({id(u.run): u.run for u in live if u.run.pending == 0}.values())

    def _drop_cancelled(self, units: list[Unit]) -> list[Unit]:
        """Skip work whose caller went away: units of jobs cancelled since the round was prepared."""
        runs = {u.run.job_id: u.run for u in units}
        states = dict(zip(runs, self.store.states(list(runs)), strict=True))
        cancelled = [runs[j] for j, state in states.items() if state == "cancelled" and not runs[j].finished]
        for run in cancelled:
            run.error = "cancelled"
        self._finish(cancelled)
        return [u for u in units if states[u.run.job_id] != "cancelled"]

    # finishing -----------------------------------------------------------------------------------
    def _finish(self, runs: list[JobRun]) -> None:
        if not runs:
            return
        for run in runs:
            run.finished = True
        outcomes = [self._outcome(run) for run in runs]
        try:
            written = self.store.finish_many(outcomes)
        except Exception as exc:  # Redis unreachable: the task rejects its message, which is redelivered
            logger.exception("writing the results of %d jobs failed", len(runs))
            for run in runs:
                run.future.set_exception(TransientError(f"could not write the result of {run.job_id}: {exc}"))
            return
        for run, final in zip(runs, written, strict=True):
            final = final or "expired"
            self.metrics.jobs.labels(final).inc()
            if run.created_at:
                self.metrics.job_latency.observe(max(time.time() - run.created_at, 0.0))
            logger.info("job %s %s: %d pairs, %d errors, %d tokens, media %.3fs, scoring %.3fs, waited %.3fs",
                        run.job_id, final, len(run.scores), len(run.errors), run.tokens, run.media_s,
                        run.scoring_s, run.started_at - (run.created_at or run.started_at))
            run.future.set_result(final)

    def _outcome(self, run: JobRun) -> tuple[str, str, dict[str, Any]]:
        if run.error:
            return run.job_id, "failed", {"error": run.error}
        if run.errors and len(run.errors) == len(run.scores):
            return run.job_id, "failed", {"error": "every document failed"}
        result = run.result(self.scorer.name)
        try:
            return run.job_id, "succeeded", result_fields(result, self._store_result(run, result))
        except Exception as exc:
            return run.job_id, "failed", {"error": str(exc)}

    def _store_result(self, run: JobRun, result: dict[str, Any]) -> str | None:
        """Write the result to S3 when asked or when large; returns its URI (None = inline)."""
        if run.job.get("result_uri"):
            uri = result_location(run.job["result_uri"], run.job_id)
            self.results.put(uri, result)
            return uri
        if len(result_fields(result, None)["result"]) > self.settings.results.inline_max_bytes:
            uri = result_location(self.settings.results.bucket_uri, run.job_id)
            self.results.put(uri, result, create_bucket=True)
            return uri
        return None
