"""The score cache in a worker's rounds (``rerankq.worker.runtime``): which pairs need no forward pass, and where their
scores go once computed. A hit only fills ``JobRun.cached``; results are built from per-document scores as
always (``rerankq.results.build_result``), so ranking cannot tell a cached score from a fresh one.

1. ``before_media``: every pair whose content can be told without fetching it (texts; S3 objects by one HEAD
   each; local files by digest) is looked up, one ``MGET`` for the round. A hit's document is not fetched or
   decoded at all, nor the query of a job whose every document hit.
2. ``after_media``: pairs that could not be told before (https:// bytes, a HEAD that failed, an object that
   changed between HEAD and GET) are keyed from what was actually decoded and looked up, one more ``MGET``.
   Every other pair keeps its key, now checked against the bytes it will be scored on.
3. ``write_back``: fresh scores of the round, one pipelined round trip, after its last forward pass.

Both scoring paths (pairs whole, or suffixes of a shared prefix) sit behind ``RerankModel.prepare_job`` and
``forward``, after step 2: a cached document never reaches either. Jobs with ``"cache": false`` and workers
with ``cache.enabled`` off or no ``cache.redis_url`` skip all three.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Any

import redis
from rerankq.media.identity import side_refs
from rerankq.media.resolver import MediaResolver
from rerankq.media.sides import ResolvedSide
from rerankq.models.contract import RerankModel
from rerankq.worker.cachekeys import JobContext, JobKeys, from_resolved, from_side
from rerankq.worker.metrics import Metrics
from rerankq.worker.rounds import JobRun, Unit, side_of
from rerankq.worker.scorecache import ScoreCache

from rerankq.errors import MediaError
from rerankq.settings import Settings

logger = logging.getLogger(__name__)

Sides = Sequence[ResolvedSide | MediaError | None]  # a job's query and documents, as ``resolve_media`` gives them


class RoundCache:
    """The score cache for one worker's rounds; inert when the cache is off (``cache.active``)."""

    def __init__(self, settings: Settings, model: RerankModel[Any], resolver: MediaResolver, metrics: Metrics,
                 broker: redis.Redis | None = None, store: ScoreCache | None = None) -> None:
        self.settings, self.resolver, self.metrics = settings, resolver, metrics
        self.store = store or (ScoreCache(settings, metrics, broker) if settings.cache.active else None)
        self.identity = model.cache_identity() if self.store is not None else ""

    def uses(self, run: JobRun) -> bool:
        return self.store is not None and run.job.cache is not False

    def context(self, run: JobRun) -> JobContext:
        return JobContext(self.identity, run.job.instruction or self.settings.instruction, run.job.max_tokens_per_doc,
                          run.budget(self.settings.limits), self.settings.media.exif_transpose)

    def before_media(self, runs: Sequence[JobRun]) -> dict[str, str | None]:
        """Look up what can be told unfetched; returns the identities found (for ``resolve_media``)."""
        runs = [r for r in runs if self.uses(r)]
        if not runs or self.store is None or not self.store.available():
            return {}
        limits = self.settings.limits
        refs = [ref for run in runs for side in (run.job.query, *run.job.documents)
                for ref in side_refs(side_of(side), run.budget(limits))]
        known = self.resolver.identify(refs) if refs else {}
        for run in runs:
            budget = run.budget(limits)
            query = from_side(side_of(run.job.query), budget, known)
            if query is not None:
                job_keys = JobKeys(self.context(run), query)
                for i, doc in enumerate(run.job.documents):
                    key = job_keys.key(from_side(side_of(doc), budget, known))
                    if key is not None:
                        run.keys[i] = key
        self._look_up([(run, i, key) for run in runs for i, key in run.keys.items()])
        return known

    def after_media(self, runs: Sequence[JobRun], sides: Sequence[Sides]) -> None:
        """Key every fetched pair by the bytes decoded; look up those whose key is new."""
        fresh: list[tuple[JobRun, int, str]] = []
        for run, job_sides in zip(runs, sides, strict=True):
            if not self.uses(run) or not isinstance(job_sides[0], ResolvedSide):
                continue
            query = from_resolved(job_sides[0])
            job_keys = JobKeys(self.context(run), query) if query is not None else None
            for i, doc in enumerate(job_sides[1:]):
                if i in run.cached or not isinstance(doc, ResolvedSide):
                    continue
                key = job_keys.key(from_resolved(doc)) if job_keys is not None else None
                if key is None:
                    run.keys.pop(i, None)
                elif run.keys.get(i) != key:
                    run.keys[i] = key
                    fresh.append((run, i, key))
        self._look_up(fresh)
        if self.store is not None and self.store.available():
            self.metrics.cache_misses.inc(sum(
                1 for run, job_sides in zip(runs, sides, strict=True) if self.uses(run)
                for i, doc in enumerate(job_sides[1:]) if isinstance(doc, ResolvedSide) and i not in run.cached))

    def write_back(self, units: Sequence[Unit]) -> None:
        """Store the fresh scores of a round's pairs (one round trip)."""
        if self.store is None:
            return
        scores: dict[str, float] = {}
        for unit in units:
            score = unit.run.scores[unit.index] if unit.index < len(unit.run.scores) else None
            if unit.key is not None and score is not None and self.uses(unit.run):
                scores[unit.key] = score
        self.store.put_many(scores)

    def _look_up(self, wanted: list[tuple[JobRun, int, str]]) -> None:
        if not wanted or self.store is None:
            return
        found = self.store.get_many([key for _, _, key in wanted]) or {}
        hits = 0
        for run, i, key in wanted:
            if key in found:
                run.cached[i] = found[key]
                hits += 1
        self.metrics.cache_hits.inc(hits)
        self.metrics.cache_pairs_saved.inc(hits)
