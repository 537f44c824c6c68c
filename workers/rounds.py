"""One *round*: the jobs a worker took from its buffer together, their pairs, and the batch plan over all
of them. Built on the preparing thread (media → prepared pairs → plan), consumed by the scoring thread
(forward passes → scores scattered back to each job → results).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from concurrent.futures import Future
from dataclasses import dataclass, field
from typing import Any, TypeVar

from reranker.pipeline import PairPreparer, PairTooLong, PreparedPair, ResolvedSide
from reranker.prompt import Side
from reranker.vision import VisionBudget
from rerankq.errors import MediaError
from rerankq.results import build_result

T = TypeVar("T")


@dataclass
class JobRun:
    """One job inside the worker: its request, the Celery task waiting on it, and what it gathered."""

    job: dict[str, Any]
    future: Future[str]
    received_at: float = field(default_factory=time.time)
    created_at: float | None = None
    scores: list[float | None] = field(default_factory=list)
    errors: dict[int, str] = field(default_factory=dict)
    error: str | None = None  # set when the job fails as a whole
    pending: int = 0  # pairs not scored yet
    tokens: int = 0
    media_s: float = 0.0
    scoring_s: float = 0.0
    started_at: float = 0.0
    finished: bool = False

    @property
    def job_id(self) -> str:
        return str(self.job["job_id"])

    def budget(self, limits: Any) -> VisionBudget:
        return VisionBudget(image_min_tokens=limits.image_min_tokens, image_max_tokens=limits.image_max_tokens,
                            video_max_tokens=limits.video_max_tokens, fps=float(self.job.get("fps") or 1.0),
                            max_frames=int(self.job.get("max_frames") or limits.max_frames))

    def result(self, model: str) -> dict[str, Any]:
        queued = (self.started_at - self.created_at) if self.created_at else 0.0
        usage = {"pairs": len(self.scores) - len(self.errors), "tokens": self.tokens}
        timings = {"queued_s": max(queued, 0.0), "media_s": self.media_s, "scoring_s": self.scoring_s}
        return build_result(self.job, model, self.scores, self.errors, usage, timings)


@dataclass
class Unit:
    """One (query, document) pair of a job, prepared."""

    run: JobRun
    index: int
    pair: PreparedPair


@dataclass
class Round:
    runs: list[JobRun]
    units: list[Unit]
    batches: list[list[int]]


def resolve_media(runs: list[JobRun], resolver: Any, limits: Any) -> list[list[ResolvedSide | MediaError]]:
    """Resolve the query and documents of every job: one concurrent call per distinct vision budget."""
    by_budget: dict[VisionBudget, list[int]] = {}
    for i, run in enumerate(runs):
        by_budget.setdefault(run.budget(limits), []).append(i)
    out: list[list[ResolvedSide | MediaError]] = [[] for _ in runs]
    for budget, members in by_budget.items():
        sides = [Side.from_dict(s) for i in members for s in (runs[i].job["query"], *runs[i].job["documents"])]
        resolved = resolver.resolve_sides(sides, budget)
        pos = 0
        for i in members:
            n = 1 + len(runs[i].job["documents"])
            out[i] = list(resolved[pos:pos + n])
            pos += n
    return out


def prepare_units(run: JobRun, sides: list[ResolvedSide | MediaError], preparer: PairPreparer,
                  instruction: str, pool: Any) -> list[Unit]:
    """The job's pairs, prepared; a document that cannot be read or is too long gets an error entry.

    Sets ``run.error`` when the query cannot be read or no document is usable.
    """
    query, documents = sides[0], sides[1:]
    run.scores = [None] * len(documents)
    if isinstance(query, MediaError):
        run.error = f"query: {query}"
        return []
    text = run.job.get("instruction") or instruction
    cap = run.job.get("max_tokens_per_doc")

    def prepare(item: tuple[int, ResolvedSide | MediaError]) -> Unit | str:
        i, doc = item
        if isinstance(doc, MediaError):
            return str(doc)
        try:
            doc = preparer.cap_texts(doc, cap) if cap else doc
            return Unit(run, i, preparer.prepare(text, query, doc))
        except PairTooLong as exc:
            return f"documents[{i}]: {exc} (scoring.max_length)"

    units: list[Unit] = []
    for i, out in enumerate(pool.map(prepare, enumerate(documents))):
        if isinstance(out, Unit):
            units.append(out)
        else:
            run.errors[i] = out
    if not units:
        run.error = "every document failed: " + "; ".join(run.errors[i] for i in sorted(run.errors)[:3])
    run.pending = len(units)
    run.tokens = sum(u.pair.length for u in units)
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
        raise RuntimeError(f"forward returned {len(scores)} scores for {len(items)} pairs")
    return list(zip(items, scores, strict=True))


def distinct_jobs(units: Sequence[Unit]) -> int:
    return len({id(u.run) for u in units})
