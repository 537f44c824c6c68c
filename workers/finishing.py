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

from rerankq.errors import PermanentError, RetryLater, TransientError
from rerankq.jobs import JobState, Outcome, as_state, result_fields
from rerankq.jobstore import JobStore
from rerankq.models.engine import JobOutcome
from rerankq.results import ResultStore, result_location
from rerankq.settings import ResultSettings
from rerankq.worker.held import HeldJob
from rerankq.worker.metrics import Metrics

Ended = tuple[HeldJob, JobOutcome]  # a job this worker holds, and what the round engine made of it

logger = logging.getLogger(__name__)


class Finisher:
    """Writes the outcomes of the jobs a round ended and resolves their futures (``HeldJob``)."""

    def __init__(self, model: str, settings: ResultSettings, store: JobStore, metrics: Metrics,
                 results: ResultStore) -> None:
        self.model = model
        self.settings = settings
        self.store = store
        self.metrics = metrics
        self.results = results

    def settle(self, run: HeldJob, state: JobState | None) -> None:
        """End a run without writing anything (cancelled by a client, held by another attempt, gone)."""
        if run.finished:
            return
        run.finished = True
        logger.info("job %s not finished here: %s", run.job_id, state or "another attempt holds it")
        run.future.set_result(state)

    def finish(self, ended: list[Ended]) -> None:
        ended = [(run, outcome) for run, outcome in ended if not run.finished]
        if not ended:
            return
        for run, _ in ended:
            run.finished = True
        try:
            outcomes = self._stored(ended)
        except Exception as exc:  # Redis unreachable while committing: back to the queue, never left waiting
            logger.warning("committing the outcome of %d jobs failed: %s", len(ended), exc)
            for run, _ in ended:
                if not run.future.done():
                    run.future.set_exception(TransientError(f"could not commit the outcome of {run.job_id}: {exc}"))
            return
        if not outcomes:
            return
        try:
            written = self.store.finish_many([o for _, o, _ in outcomes])
        except Exception as exc:  # Redis unreachable past its retries: the job goes back to its queue
            logger.warning("writing the outcome of %d jobs failed: %s", len(outcomes), exc)
            for run, _, _ in outcomes:
                run.future.set_exception(TransientError(f"could not write the outcome of {run.job_id}: {exc}"))
            return
        for (run, outcome, ran), final in zip(outcomes, written, strict=True):
            self._written(run, outcome, ran, final)

    def _written(self, run: HeldJob, outcome: Outcome, ran: JobOutcome, final: str | None) -> None:
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
                    run.job_id, state, len(ran.scores), len(ran.errors), ran.tokens, ran.media_s, ran.scoring_s,
                    run.queued_s)
        run.future.set_result(state)

    def _stored(self, ended: list[Ended]) -> list[tuple[HeldJob, Outcome, JobOutcome]]:
        """Each job's outcome; results bound for S3 are written there first, by attempts that may."""
        out: list[tuple[HeldJob, Outcome, JobOutcome]] = []
        to_s3: list[tuple[HeldJob, JobOutcome, dict[str, Any], str]] = []
        for run, ran in ended:
            error = ran.failure
            if error:
                run.final = {"error": error}
                out.append((run, Outcome(run.job_id, run.fence, JobState.FAILED, {"error": error}), ran))
                continue
            result = ran.result(self.model, run.queued_s)
            uri = self._location(run, result)
            if uri is None:
                run.final = result
                out.append((run, Outcome(run.job_id, run.fence, JobState.SUCCEEDED, _done(ran, result, None)), ran))
            else:
                to_s3.append((run, ran, result, uri))
        if to_s3:
            out += self._write_s3(to_s3)
        return out

    def _location(self, run: HeldJob, result: dict[str, Any]) -> str | None:
        if run.job.result_uri:
            return result_location(run.job.result_uri, run.job_id)
        if len(result_fields(result, None)["result"]) > self.settings.inline_max_bytes:
            return result_location(self.settings.bucket_uri, run.job_id)
        return None

    def _write_s3(self, items: list[tuple[HeldJob, JobOutcome, dict[str, Any], str]]
                  ) -> list[tuple[HeldJob, Outcome, JobOutcome]]:
        granted = self.store.commit_many([run.attempt for run, _, _, _ in items])
        out: list[tuple[HeldJob, Outcome, JobOutcome]] = []
        for (run, ran, result, uri), grant in zip(items, granted, strict=True):
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
                out.append((run, Outcome(run.job_id, run.fence, JobState.FAILED, run.final), ran))
                continue
            run.final = {"job_id": run.job_id, "state": JobState.SUCCEEDED.value, "result_uri": uri}
            out.append((run, Outcome(run.job_id, run.fence, JobState.SUCCEEDED, _done(ran, result, uri)), ran))
        return out

    def _requeue(self, run: HeldJob, exc: TransientError) -> None:
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


def _done(ran: JobOutcome, result: dict[str, Any], uri: str | None) -> dict[str, Any]:
    """A succeeded job's record fields: its result, and every document done (no progress write for the pass
    that ended it)."""
    return {**result_fields(result, uri), "pairs_done": len(ran.scores)}
