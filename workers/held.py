"""A job this worker holds: its request, the Celery task thread waiting on it, and this attempt's bookkeeping.

What the job *becomes* (media, pairs, scores, its result) are the round engine's values
(``rerankq.models.engine``); this record is only what the worker needs around them: the attempt's fence, the
future the task thread waits on, how many media retries it had, and whether its outcome is written.
"""

from __future__ import annotations

import time
from concurrent.futures import Future
from dataclasses import dataclass, field
from typing import Any

from rerankq.jobs import JobState
from rerankq.media.sides import Side, VisionBudget
from rerankq.models.engine import JobInput, Recalled
from rerankq.schema import EmbedJob, Job, SideSpec
from rerankq.settings import LimitSettings


@dataclass
class HeldJob:
    """``future`` resolves to the job's final ``JobState``, to ``None`` when another attempt holds the job (this
    one was presumed dead) or the record is gone, or to a ``TransientError`` (the message is requeued)."""

    job: Job
    future: Future[JobState | None]
    solo: bool = False  # its previous holder died: it runs in a round of its own
    received_at: float = field(default_factory=time.time)
    fence: int = 0  # this attempt's token (rerankq.jobs)
    created_at: float | None = None
    started_at: float = 0.0
    media_retries: int = 0
    finished: bool = False
    final: dict[str, Any] | None = None  # once written: the result (or its S3 pointer), or {"error": …}
    unreported: int = 0  # pairs done and not yet added to the record's pairs_done (``Runtime._report_progress``)
    reported_at: float = 0.0  # when progress was last written (monotonic; 0: never)
    started_mono: float = 0.0  # when this attempt started (monotonic)
    recalled: Recalled | None = None  # what its recall stage kept (``job`` holds those documents alone)
    failure: str | None = None  # why it fails before it runs (its recall stage failed)

    @property
    def job_id(self) -> str:
        return self.job.id

    @property
    def attempt(self) -> tuple[str, int]:
        return self.job_id, self.fence

    @property
    def queued_s(self) -> float:
        return self.started_at - self.created_at if self.created_at else 0.0


def side_of(spec: SideSpec) -> Side:
    """A job's query or document as the media layer takes it."""
    return Side.from_dict(spec.model_dump(exclude_none=True))


def budget_of(job: Job, limits: LimitSettings) -> VisionBudget:
    return VisionBudget(image_min_tokens=limits.image_min_tokens, image_max_tokens=limits.image_max_tokens,
                        video_max_tokens=limits.video_max_tokens, fps=float(job.fps or 1.0),
                        max_frames=int(job.max_frames or limits.max_frames))


def engine_input(held: HeldJob, limits: LimitSettings, instruction: str, retry_media: bool) -> JobInput:
    """The job as the round engine takes it (``instruction``: the deployment's default, when it gives none)."""
    job = held.job
    if isinstance(job, EmbedJob):
        return JobInput(job.id, None, [side_of(d) for d in job.inputs], job.instruction or instruction,
                        budget_of(job, limits), use_cache=job.cache is not False, retry_media=retry_media,
                        task="embed", dimensions=job.dimensions, encoding=job.encoding_format)
    return JobInput(job.id, side_of(job.query), [side_of(d) for d in job.documents], job.instruction or instruction,
                    budget_of(job, limits), job.top_n, job.max_tokens_per_doc, job.cache is not False, retry_media,
                    recalled=held.recalled)
