"""Ending jobs: each job's outcome written exactly once, by the attempt that holds it.

A job whose result goes to S3 (``result_uri``, or larger than ``results.inline_max_bytes``) first *commits*
(``rerankq.jobs``: the record moves to ``finishing`` only if it is still this attempt's and not cancelled),
then writes S3, then finishes; so once ``cancel`` has returned, nothing writes that job's result anywhere.
A transient failure on the way (S3 down, Redis gone) puts the job back in its queue; a permanent one fails
it with the reason. Metrics and the per-job log line count only what this attempt actually wrote.
"""

from __future__ import annotations

import logging
import time
from typing import Any

from rerankq.worker.metrics import Metrics
from rerankq.worker.rounds import JobRun

from rerankq.errors import PermanentError, RetryLater, TransientError
from rerankq.jobs import JobState, Outcome, as_state, result_fields
from rerankq.jobstore import JobStore
from rerankq.results import ResultStore, result_location
from rerankq.settings import Settings

logger = logging.getLogger(__name__)


class Finisher:
    """Writes the outcomes of finished runs and resolves their futures (``JobRun``)."""

    def __init__(self, model: str, settings: Settings, store: JobStore, metrics: Metrics,
                 results: ResultStore | None = None) -> None:
        self.model = model
        self.settings = settings
        self.store = store
        self.metrics = metrics
        self.results = results or ResultStore(settings.s3_endpoint_url)

    def settle(self, run: JobRun, state: JobState | None) -> None:
        """End a run without writing anything (cancelled by a client, held by another attempt, gone)."""
        if run.finished:
            return
        run.finished = True
        logger.info("job %s not finished here: %s", run.job_id, state or "another attempt holds it")
        run.future.set_result(state)

    def finish(self, runs: list[JobRun]) -> None:
        runs = [r for r in runs if not r.finished]
        if not runs:
            return
        for run in runs:
            run.finished = True
        try:
            outcomes = self._stored(runs)
        except Exception as exc:  # Redis unreachable while committing: back to the queue, never left waiting
            logger.warning("committing the outcome of %d jobs failed: %s", len(runs), exc)
            for run in runs:
                if not run.future.done():
                    run.future.set_exception(TransientError(f"could not commit the outcome of {run.job_id}: {exc}"))
            return
        if not outcomes:
            return
        try:
            written = self.store.finish_many([o for _, o in outcomes])
        except Exception as exc:  # Redis unreachable past its retries: the job goes back to its queue
            logger.warning("writing the outcome of %d jobs failed: %s", len(outcomes), exc)
            for run, _ in outcomes:
                run.future.set_exception(TransientError(f"could not write the outcome of {run.job_id}: {exc}"))
            return
        for (run, outcome), final in zip(outcomes, written, strict=True):
            self._written(run, outcome, final)

    def _written(self, run: JobRun, outcome: Outcome, final: str | None) -> None:
        state = outcome.state
        if final != state.value:  # refused: cancelled meanwhile, another attempt holds it, or already ended
            run.final = None
            run.future.set_result(as_state(final))
            logger.info("job %s: outcome %s not written (%s)", run.job_id, state, final or "record missing")
            return
        self.metrics.job_ended(state)
        if run.created_at:
            self.metrics.job_latency.observe(max(time.time() - run.created_at, 0.0))
        logger.info("job %s %s: %d pairs, %d errors, %d tokens, media %.3fs, scoring %.3fs, waited %.3fs",
                    run.job_id, state, len(run.scores), len(run.errors), run.tokens, run.media_s, run.scoring_s,
                    run.started_at - (run.created_at or run.started_at))
        run.future.set_result(state)

    def _stored(self, runs: list[JobRun]) -> list[tuple[JobRun, Outcome]]:
        """Each run's outcome; results bound for S3 are written there first, by attempts that may."""
        out: list[tuple[JobRun, Outcome]] = []
        to_s3: list[tuple[JobRun, dict[str, Any], str]] = []
        for run in runs:
            if run.error or (run.errors and len(run.errors) == len(run.scores)):
                error = run.error or "every document failed"
                run.final = {"error": error}
                out.append((run, Outcome(run.job_id, run.fence, JobState.FAILED, {"error": error})))
                continue
            result = run.result(self.model)
            uri = self._location(run, result)
            if uri is None:
                run.final = result
                out.append((run, Outcome(run.job_id, run.fence, JobState.SUCCEEDED, result_fields(result, None))))
            else:
                to_s3.append((run, result, uri))
        if to_s3:
            out += self._write_s3(to_s3)
        return out

    def _location(self, run: JobRun, result: dict[str, Any]) -> str | None:
        if run.job.result_uri:
            return result_location(run.job.result_uri, run.job_id)
        if len(result_fields(result, None)["result"]) > self.settings.results.inline_max_bytes:
            return result_location(self.settings.results.bucket_uri, run.job_id)
        return None

    def _write_s3(self, items: list[tuple[JobRun, dict[str, Any], str]]) -> list[tuple[JobRun, Outcome]]:
        granted = self.store.commit_many([run.attempt for run, _, _ in items])
        out: list[tuple[JobRun, Outcome]] = []
        for (run, result, uri), grant in zip(items, granted, strict=True):
            if grant != "finishing":
                run.finished = False
                self.settle(run, as_state(grant))
                continue
            try:
                self.results.put(uri, result, create_bucket=not run.job.result_uri)
            except TransientError as exc:
                self._requeue(run, exc)
                continue
            except PermanentError as exc:
                run.final = {"error": f"could not write the result: {exc}"}
                out.append((run, Outcome(run.job_id, run.fence, JobState.FAILED, run.final)))
                continue
            run.final = {"job_id": run.job_id, "state": JobState.SUCCEEDED.value, "result_uri": uri}
            out.append((run, Outcome(run.job_id, run.fence, JobState.SUCCEEDED, result_fields(result, uri))))
        return out

    def _requeue(self, run: JobRun, exc: TransientError) -> None:
        """Back to the queue: the record reads queued, the task rejects its message with requeue."""
        self.metrics.retries.inc()
        try:
            retries = self.store.requeue(run.job_id, run.fence, str(exc))
        except Exception as redis_exc:  # the record stays running: the redelivery sees a dead holder
            logger.warning("job %s: could not mark it queued: %s", run.job_id, redis_exc)
            retries = 1
        after = min(0.5 * 2 ** max(retries - 1, 0), 30.0)  # the message waits before it goes back: no hot loop
        logger.warning("job %s: %s; back to its queue in %.1f s", run.job_id, exc, after)
        run.future.set_exception(RetryLater(str(exc), after))
