"""One *round*: the jobs a worker took from its buffer together, their pairs, and the batch plan over all
of them. Built on the preparing thread (media → prepared pairs → plan), consumed by the scoring thread
(forward passes → scores scattered back to each job → results). Nothing here knows which model runs: the
model is a ``rerankq.models.contract.RerankModel``.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import Future
from dataclasses import dataclass, field
from typing import Any, TypeVar

from rerankq.media.resolver import MediaResolver
from rerankq.media.sides import ResolvedSide, Side, VisionBudget
from rerankq.models.contract import Prepared, RerankModel

from rerankq.errors import MediaError, PairTooLong, TransientError
from rerankq.jobs import JobState
from rerankq.results import build_result
from rerankq.schema import RerankJob
from rerankq.settings import LimitSettings, knob

logger = logging.getLogger(__name__)
T = TypeVar("T")


@dataclass
class JobRun:
    """One job inside the worker: its request, the Celery task waiting on it, and what it gathered.

    ``future`` resolves to the job's final ``JobState``, to ``None`` when another attempt holds the job (this
    one was presumed dead) or the record is gone, or to a ``TransientError`` (the message is requeued)."""

    job: RerankJob
    future: Future[JobState | None]
    solo: bool = False  # its previous holder died: it runs in a round of its own
    received_at: float = field(default_factory=time.time)
    fence: int = 0  # this attempt's token (rerankq.jobs)
    created_at: float | None = None
    scores: list[float | None] = field(default_factory=list)
    errors: dict[int, str] = field(default_factory=dict)
    error: str | None = None  # set when the job fails as a whole
    pending: int = 0  # pairs not scored yet
    tokens: int = 0
    media_s: float = 0.0
    scoring_s: float = 0.0
    started_at: float = 0.0
    media_retries: int = 0
    cached: dict[int, float] = field(default_factory=dict)  # document index → score from the score cache
    keys: dict[int, str] = field(default_factory=dict)  # document index → its score cache key (rerankq.worker.caching)
    finished: bool = False
    final: dict[str, Any] | None = None  # once written: the result (or its S3 pointer), or {"error": …}

    @property
    def job_id(self) -> str:
        return self.job.id

    @property
    def attempt(self) -> tuple[str, int]:
        return self.job_id, self.fence

    def budget(self, limits: LimitSettings) -> VisionBudget:
        return VisionBudget(image_min_tokens=limits.image_min_tokens, image_max_tokens=limits.image_max_tokens,
                            video_max_tokens=limits.video_max_tokens, fps=float(self.job.fps or 1.0),
                            max_frames=int(self.job.max_frames or limits.max_frames))

    def result(self, model: str) -> dict[str, Any]:
        queued = (self.started_at - self.created_at) if self.created_at else 0.0
        # tokens: only pairs this attempt ran through the model; cached pairs are counted apart, by index
        usage = {"pairs": len(self.scores) - len(self.errors), "tokens": self.tokens,
                 "cached_pairs": len(self.cached), "cached_indices": sorted(self.cached)}
        timings = {"queued_s": max(queued, 0.0), "media_s": self.media_s, "scoring_s": self.scoring_s}
        return build_result(self.job_id, self.job.top_n, model, self.scores, self.errors, usage, timings)

    def reset(self) -> None:
        """Forget what an attempt gathered (before the job is tried again after a transient failure)."""
        self.scores, self.errors, self.error, self.pending, self.tokens = [], {}, None, 0, 0
        self.cached, self.keys = {}, {}


@dataclass
class Unit:
    """One (query, document) pair of a job, prepared."""

    run: JobRun
    index: int
    pair: Prepared
    key: str | None = None  # where its score goes in the score cache


@dataclass
class Round:
    runs: list[JobRun]
    units: list[Unit]
    batches: list[list[int]]


def side_of(data: Any) -> Side:
    """A job's query or document (``rerankq.schema.SideSpec``) as the media layer takes it."""
    return Side.from_dict(data.model_dump(exclude_none=True))


def _needed(run: JobRun) -> list[int]:
    """Which sides of a job to resolve (0 the query, i + 1 document i): not the documents scored from the
    cache, nor the query when every document was."""
    docs = [i + 1 for i in range(len(run.job.documents)) if i not in run.cached]
    return [0, *docs] if docs else []


def resolve_media(runs: list[JobRun], resolver: MediaResolver, limits: LimitSettings,
                  known: Mapping[str, str | None] | None = None) -> list[list[ResolvedSide | MediaError | None]]:
    """Resolve the query and documents of every job: one concurrent call per distinct vision budget. Sides
    not needed (``_needed``) are None; ``known`` are media identities just found (``MediaResolver.identify``)."""
    by_budget: dict[VisionBudget, list[int]] = {}
    for i, run in enumerate(runs):
        by_budget.setdefault(run.budget(limits), []).append(i)
    out: list[list[ResolvedSide | MediaError | None]] = [[None] * (1 + len(run.job.documents)) for run in runs]
    for budget, members in by_budget.items():
        wanted = [(i, j) for i in members for j in _needed(runs[i])]
        specs = [runs[i].job.query if j == 0 else runs[i].job.documents[j - 1] for i, j in wanted]
        resolved = resolver.resolve_sides([side_of(s) for s in specs], budget, known)
        for (i, j), side in zip(wanted, resolved, strict=True):
            out[i][j] = side
    return out


def transient_failure(sides: Sequence[ResolvedSide | MediaError | None]) -> MediaError | None:
    """The first medium of a job that failed only transiently (outlived the fetch retries), if any."""
    for side in sides:
        if isinstance(side, MediaError) and isinstance(side.__cause__, TransientError):
            return side
    return None


def prepare_units(run: JobRun, sides: Sequence[ResolvedSide | MediaError | None], model: RerankModel[Any],
                  instruction: str) -> list[Unit]:
    """The job's pairs, prepared; a document that cannot be read or prepared gets an error entry, one scored
    from the cache (``run.cached``) gets its score and no pair.

    Sets ``run.error`` when the query cannot be read or no document is usable. Any exception the model raises
    for one document is that document's error; one raised for the whole job is the job's: never the round's.
    """
    query, documents = sides[0], sides[1:]
    run.scores = [run.cached.get(i) for i in range(len(documents))]
    if isinstance(query, MediaError):
        run.error = f"query: {query}"
        return []
    if query is None:  # every document came from the cache: nothing to prepare
        return []
    usable = [(i, d) for i, d in enumerate(documents) if isinstance(d, ResolvedSide) and i not in run.cached]
    if run.job.max_tokens_per_doc:  # Cohere's max_tokens_per_doc: each document's texts cut first
        usable = [(i, model.cap_texts(d, run.job.max_tokens_per_doc)) for i, d in usable]
    for i, doc in enumerate(documents):
        if isinstance(doc, MediaError):
            run.errors[i] = str(doc)
    try:
        prepared = model.prepare_job(run.job.instruction or instruction, query, [d for _, d in usable])
    except Exception as exc:  # a model bug or hostile input fails this job alone
        logger.exception("preparing job %s failed", run.job_id)
        run.error = f"could not prepare the job: {type(exc).__name__}: {exc}"
        return []
    units = _units(run, [i for i, _ in usable], prepared)
    if not units and not run.cached:
        run.error = "every document failed: " + "; ".join(run.errors[i] for i in sorted(run.errors)[:3])
    run.pending = len(units)
    run.tokens = sum(u.pair.length for u in units)
    return units


def _units(run: JobRun, indices: list[int], prepared: Sequence[Prepared | Exception]) -> list[Unit]:
    """The prepared pairs of documents ``indices``; a pair that could not be prepared is its document's error."""
    units: list[Unit] = []
    for i, pair in zip(indices, prepared, strict=True):
        if isinstance(pair, PairTooLong):
            run.errors[i] = f"documents[{i}]: {pair} ({knob('scoring.max_length')})"
        elif isinstance(pair, Exception):
            run.errors[i] = f"documents[{i}]: {pair}"
        else:
            units.append(Unit(run, i, pair, run.keys.get(i)))
    return units


def score_isolating(forward: Callable[[list[T]], list[float]], items: list[T]
                    ) -> list[tuple[T, float | BaseException]]:
    """Run ``forward`` over ``items``; if it raises, split in halves and retry each, down to single items,
    so that only the items that fail on their own get the exception and the rest are scored."""
    try:
        scores = forward(items)
    except Exception as exc:
        if len(items) == 1:
            return [(items[0], exc)]
        mid = len(items) // 2
        return score_isolating(forward, items[:mid]) + score_isolating(forward, items[mid:])
    if len(scores) != len(items):
        raise RuntimeError(f"forward returned {len(scores)} scores for {len(items)} pairs: a model must return "
                           "exactly one score per pair, in order (rerankq.models.contract.RerankModel.forward)")
    return list(zip(items, scores, strict=True))


def distinct_jobs(units: Sequence[Unit]) -> int:
    return len({id(u.run) for u in units})


def record_batch(path: str, units: Sequence[Unit]) -> None:
    """Append the pass's pairs, as (job id, document index), to ``path`` (``batch.record_path``)."""
    with open(path, "a") as out:
        out.write(json.dumps({"pairs": [[u.run.job_id, u.index] for u in units]}) + "\n")
