"""The round engine: a round's jobs in, their outcomes out, through six named stages.

    JobInput ─1 look up─▶ Lookup ─2 resolve media─▶ sides ─(look up again)─▶ ─3 prepare─▶ PreparedJob
             ─4 plan─▶ Plan ─5 forward, isolating failures─▶ Pass ... ─6 assemble─▶ JobOutcome

1. ``look_up``: pairs whose content can be told before any fetch (texts, S3 ETags by HEAD, file digests) are
   looked up in the score cache; a hit is neither fetched nor scored.
2. ``resolve``: the query and the documents still needed are fetched, decoded and preprocessed by the media
   layer; pairs keyed only now (https bytes) are looked up once more.
3. ``prepare``: the model builds each pair (one tokenisation of the query, maybe a shared prefix); a document
   that cannot be read or prepared gets its error, a job whose query cannot be read fails.
4. ``plan``: token-budgeted passes over the pairs of every job of the round (``rerankq.models.batching``).
5. ``score``: the passes, one at a time; a pass that raises is split down to the pair that fails.
6. ``assemble``: each job's outcome once its last pair is scored; the round's fresh scores go to the cache.

The same six stages run embedding jobs (``JobInput.task`` ``embed``, for a model whose ``capabilities.task`` is
``embed``): a job has no query, its inputs stand where documents stand, ``forward`` gives a vector per input
where a reranker gives a score per pair, the cache holds vectors by the same content keys, and stage 6 cuts
each vector to the job's ``dimensions`` (Matryoshka) and encodes it.

Thread-free, and it owns nothing but the model, the media resolver and an optional ``ScoreStore``. Two callers:
the worker's runtime (``rerankq.worker.runtime``) runs ``prepare`` (1-4) on its preparing thread and ``score``
(5-6) on its scoring thread, so that the next round is prepared while this one is on the device; and
``Qwen3VLReranker.process`` (``rerankq.models.inprocess``) runs the two in turn. Each stage's output is a value;
nothing is written back into the jobs.
"""

from __future__ import annotations

import base64
import logging
import time
from collections.abc import Callable, Collection, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol, TypeVar

import numpy as np

from rerankq.capabilities import refusal, side_reason
from rerankq.errors import MediaError, PairTooLong, TransientError
from rerankq.keys import VECTOR_PREFIX
from rerankq.media.identity import side_refs
from rerankq.media.resolver import MediaResolver
from rerankq.media.sides import ResolvedSide, Side, VisionBudget
from rerankq.models.batching import padding_ratio, plan_with_prefixes
from rerankq.models.contract import Prepared, RerankModel, own_lengths, prefix_marks
from rerankq.models.scorekeys import NO_QUERY, JobContext, JobKeys, from_resolved, from_side
from rerankq.results import build_embed_result, build_result
from rerankq.settings import BatchSettings

logger = logging.getLogger(__name__)
T = TypeVar("T")
Sides = list[ResolvedSide | MediaError | None]  # a job's query, then its documents; None: not needed


class ScoreStore(Protocol):
    """Where cached scores (floats) and vectors (``VECTOR_PREFIX`` + float32 bytes) live, by content key
    (``rerankq.models.scorekeys``). Never raises."""

    def available(self) -> bool: ...

    def get_many(self, keys: Sequence[str]) -> Mapping[str, float | bytes] | None: ...

    def put_many(self, scores: Mapping[str, float | bytes]) -> None: ...


@dataclass(frozen=True)
class Recalled:
    """What a rerank job's recall stage kept (``rerankq.worker.recall``): the documents to rerank (their indices
    in the job as submitted, in document order; the job the engine runs holds these alone), how many the job had,
    the errors of documents that could not be embedded, each kept document's similarity to the query, and the
    recall model and ``top_k``."""

    indices: tuple[int, ...]
    total: int
    errors: dict[int, str]
    similarities: tuple[float, ...]
    model: str
    top_k: int

    def widen(self, scores: list[Any], errors: Mapping[int, str]) -> tuple[list[Any], dict[int, str]]:
        """Scores and errors of the narrowed job, by the submitted job's document indices."""
        wide: list[Any] = [None] * self.total
        wide_errors = dict(self.errors)
        for k, i in enumerate(self.indices):
            wide[i] = scores[k]
            if k in errors:
                wide_errors[i] = errors[k].replace(f"documents[{k}]", f"documents[{i}]", 1)
        return wide, wide_errors

    def summary(self) -> dict[str, Any]:
        return {"model": self.model, "top_k": self.top_k, "recalled": list(self.indices),
                "similarities": [round(s, 6) for s in self.similarities]}


@dataclass(frozen=True)
class JobInput:
    """One job as the engine takes it. ``retry_media``: a medium that failed only transiently sends the job
    back (``PreparedJob.retry``) instead of becoming that document's error. An embedding job (``task``
    ``embed``) has no query; its inputs are ``documents``, and ``dimensions`` / ``encoding`` shape its vectors."""

    id: str
    query: Side | None
    documents: list[Side]
    instruction: str
    budget: VisionBudget = field(default_factory=VisionBudget)
    top_n: int | None = None
    max_tokens_per_doc: int | None = None
    use_cache: bool = True
    retry_media: bool = False
    task: str = "rerank"
    dimensions: int | None = None
    encoding: str = "float"
    recalled: Recalled | None = None  # a rerank job narrowed by its recall stage

    @property
    def field(self) -> str:
        """What its documents are called in errors: ``documents`` or, for an embedding job, ``inputs``."""
        return "inputs" if self.task == "embed" else "documents"

    @property
    def item(self) -> str:
        """One of them, in words: ``document`` or ``input``."""
        return "input" if self.task == "embed" else "document"


@dataclass(frozen=True)
class Lookup:
    """Stage 1's value for one job: score-cache keys by document index, and the scores found."""

    keys: dict[int, str] = field(default_factory=dict)
    hits: dict[int, Any] = field(default_factory=dict)  # scores, or an embedding model's vectors


@dataclass(frozen=True)
class PreparedJob:
    """Stage 3's value for one job: the pairs to score, and what is settled without a pass."""

    job: JobInput
    pairs: dict[int, Prepared] = field(default_factory=dict)  # document index → pair
    errors: dict[int, str] = field(default_factory=dict)  # document index → why it cannot be scored
    lookup: Lookup = field(default_factory=Lookup)
    error: str | None = None  # the job fails as a whole
    query_error: MediaError | None = None
    retry: MediaError | None = None  # a transient media failure (``JobInput.retry_media``): nothing prepared
    media_s: float = 0.0

    @property
    def settled(self) -> int:
        """Documents done before any pass: failed, or scored from the cache."""
        return len(self.errors) + len(self.lookup.hits)


@dataclass(frozen=True)
class Unit:
    """One pair of the round: its job's position in ``Plan.jobs``, its document index, the prepared pair."""

    job: int
    index: int
    pair: Prepared


@dataclass(frozen=True)
class Plan:
    """Stage 4's value: the round's jobs, every pair to score, and the passes over them (indices into
    ``units``). ``cache_hits`` / ``cache_misses`` count this round's look-ups."""

    jobs: list[PreparedJob]
    units: list[Unit]
    batches: list[list[int]]
    media_s: float = 0.0
    cache_hits: int = 0
    cache_misses: int = 0


@dataclass(frozen=True)
class JobOutcome:
    """Stage 6's value: one job's scores in document order (None where it failed), errors, or its failure."""

    job: JobInput
    scores: list[Any]  # a score (float) per document, or a vector (float32 array) per input; None where it failed
    errors: dict[int, str]
    error: str | None = None
    query_error: MediaError | None = None
    cached: tuple[int, ...] = ()
    tokens: int = 0  # tokens of the pairs this round ran through the model (cached pairs: none)
    media_s: float = 0.0
    scoring_s: float = 0.0

    @property
    def failure(self) -> str | None:
        """Why the job fails as a whole, if it does."""
        if self.error:
            return self.error
        return f"every {self.job.item} failed" if self.errors and len(self.errors) == len(self.scores) else None

    def result(self, model: str, queued_s: float = 0.0) -> dict[str, Any]:
        timings = {"queued_s": max(queued_s, 0.0), "media_s": self.media_s, "scoring_s": self.scoring_s}
        if self.job.task == "embed":
            usage = {"inputs": len(self.scores) - len(self.errors), "tokens": self.tokens,
                     "cached_inputs": len(self.cached), "cached_indices": list(self.cached)}
            vectors = [None if v is None else encode_vector(matryoshka(v, self.job.dimensions), self.job.encoding)
                       for v in self.scores]
            dimensions = self.job.dimensions or next((len(v) for v in self.scores if v is not None), 0)
            return build_embed_result(self.job.id, model, vectors, dimensions, self.errors, usage, timings)
        usage = {"pairs": len(self.scores) - len(self.errors), "tokens": self.tokens,
                 "cached_pairs": len(self.cached), "cached_indices": list(self.cached)}
        recalled = self.job.recalled
        if recalled is None:
            return build_result(self.job.id, self.job.top_n, model, self.scores, self.errors, usage, timings)
        scores, errors = recalled.widen(self.scores, self.errors)
        usage["cached_indices"] = [recalled.indices[k] for k in self.cached]
        result = build_result(self.job.id, self.job.top_n, model, scores, errors, usage, timings)
        return {**result, "recall": recalled.summary()}


def matryoshka(vector: Any, dimensions: int | None) -> np.ndarray:
    """The first ``dimensions`` components (all when None), L2-normalised: a vector's Matryoshka cut."""
    cut = np.asarray(vector, dtype=np.float32)[:dimensions]
    norm = float(np.linalg.norm(cut))
    return cut / norm if norm > 0 else cut


def encode_vector(vector: np.ndarray, encoding: str) -> list[float] | str:
    """``float``: a list of numbers (9 significant digits, what float32 holds); ``base64``: the float32
    little-endian bytes in base64 (OpenAI's ``encoding_format``)."""
    if encoding == "base64":
        return base64.b64encode(vector.astype("<f4").tobytes()).decode()
    return [float(format(x, ".9g")) for x in vector.tolist()]


def failed(job: JobInput, error: str) -> JobOutcome:
    """The outcome of a job that fails before the engine sees it (the caller's checks)."""
    return JobOutcome(job, [None] * len(job.documents), {}, error)


@dataclass(frozen=True)
class Pass:
    """What one forward pass did: the outcomes of the jobs whose last pair it scored, and its figures.
    ``left``: passes still to run. A first pass with no pairs ends the jobs that needed none."""

    finished: list[JobOutcome]
    pairs: list[tuple[str, int]]  # (job id, document index) of each pair, as run
    scored: dict[str, int]  # job id → pairs this pass settled
    jobs: int = 0
    failed: int = 0
    seconds: float = 0.0
    padding: float = 0.0
    left: int = 0


class RoundEngine:
    """Runs rounds for one model: ``prepare`` (stages 1-4), then ``score`` (5-6); ``run`` does both."""

    def __init__(self, model: RerankModel[Any], resolver: MediaResolver, batch: BatchSettings,
                 scores: ScoreStore | None = None, exif_transpose: bool = False, too_long_hint: str = "") -> None:
        """``too_long_hint`` follows the error of a pair too long: the caller's name for ``max_length``."""
        self.model, self.resolver, self.batch = model, resolver, batch
        self.scores, self.exif_transpose, self.too_long_hint = scores, exif_transpose, too_long_hint
        self._identity: str | None = None

    def run(self, jobs: Sequence[JobInput]) -> list[JobOutcome]:
        """Every stage in turn; outcomes in job order (a job sent back for a media retry has none)."""
        plan = self.prepare(jobs)
        outcomes = {o.job.id: o for p in self.score(plan) for o in p.finished}
        return [outcomes[j.id] for j in jobs if j.id in outcomes]

    # stages 1-4 ---------------------------------------------------------------------------------------------------
    def prepare(self, jobs: Sequence[JobInput]) -> Plan:
        t0 = time.perf_counter()
        # A job this model cannot serve as a whole (another task, too many dimensions) fails before any fetch.
        unservable = [PreparedJob(job, error=why) for job in jobs if (why := self.unservable(job)) is not None]
        refused_ids = {u.job.id for u in unservable}
        jobs = [job for job in jobs if job.id not in refused_ids]
        refused = [self.refused(job) for job in jobs]
        known, lookups = self.look_up(jobs, refused)
        sides = self.resolve(jobs, lookups, known, refused)
        lookups = [self.look_up_resolved(job, s, look) for job, s, look in zip(jobs, sides, lookups, strict=True)]
        media_s = time.perf_counter() - t0
        prepared = unservable + [self.prepare_job(job, s, look, media_s)
                                 for job, s, look in zip(jobs, sides, lookups, strict=True)]
        misses = sum(1 for job, s, look in zip(jobs, sides, lookups, strict=True) if self._caches(job)
                     for i, d in enumerate(s[1:]) if isinstance(d, ResolvedSide) and i not in look.hits)
        return self.plan(prepared, media_s, sum(len(look.hits) for look in lookups), misses)

    def refused(self, job: JobInput) -> dict[int, MediaError]:
        """Before any fetch: the sides holding a modality the model does not read (``capabilities``), by
        position (0 the query, i + 1 document i), each as its error naming the model and what it reads."""
        caps, out = self.model.capabilities, {}
        for j, side in enumerate((job.query, *job.documents)):
            if side is None:  # an embedding job's missing query
                continue
            why = side_reason(caps, "query" if j == 0 else "documents", side)
            if why:
                out[j] = MediaError(f"model {self.model.name!r}", why)
        return out

    def unservable(self, job: JobInput) -> str | None:
        """Why the job as a whole cannot be served by this model (another task; more dimensions than its
        vectors have), or None: the same reasons the SDK and the gateway refuse at submit."""
        why = refusal(self.model.name, self.model.capabilities, job.task, None, (), job.dimensions)
        return None if why is None else f"{why[0]}: {why[1]}"

    def look_up(self, jobs: Sequence[JobInput], refused: Sequence[Mapping[int, MediaError]] | None = None,
                ) -> tuple[dict[str, str | None], list[Lookup]]:
        """Stage 1: keys of the pairs that can be told unfetched, and the cache's scores for them. Also returns
        the media identities found on the way (S3 HEADs), which ``resolve`` reuses. Refused sides are not
        looked at (a refused query: the whole job)."""
        refused = refused or [{} for _ in jobs]
        skip = {job.id: no for job, no in zip(jobs, refused, strict=True)}
        caching = [job for job in jobs if self._caches(job) and 0 not in skip[job.id]]
        if not caching:
            return {}, [Lookup() for _ in jobs]
        refs = [ref for job in caching for j, side in enumerate((job.query, *job.documents))
                if j not in skip[job.id] and side is not None for ref in side_refs(side, job.budget)]
        known = self.resolver.identify(refs) if refs else {}
        keyed: dict[str, dict[int, str]] = {}
        for job in caching:
            query = NO_QUERY if job.query is None else from_side(job.query, job.budget, known)
            if query is not None:
                job_keys = JobKeys(self._context(job), query)
                found = {i: job_keys.key(from_side(doc, job.budget, known)) for i, doc in enumerate(job.documents)
                         if i + 1 not in skip[job.id]}
                keyed[job.id] = {i: key for i, key in found.items() if key is not None}
        hits = self._get({key for job_keys in keyed.values() for key in job_keys.values()})
        lookups = []
        for job in jobs:
            keys = keyed.get(job.id, {})
            lookups.append(Lookup(keys, {i: hits[k] for i, k in keys.items() if k in hits}))
        return known, lookups

    def resolve(self, jobs: Sequence[JobInput], lookups: Sequence[Lookup],
                known: Mapping[str, str | None] | None = None,
                refused: Sequence[Mapping[int, MediaError]] | None = None) -> list[Sides]:
        """Stage 2: the sides each job still needs, resolved: one concurrent call per distinct vision budget.
        Not needed: documents scored from the cache, and the query when every document was. A refused side is
        its error, unfetched (a refused query: the job's documents are not fetched either)."""
        refused = refused or [{} for _ in jobs]
        out: list[Sides] = [[no.get(j) for j in range(1 + len(job.documents))] for job, no in zip(jobs, refused,
                                                                                                    strict=True)]
        by_budget: dict[VisionBudget, list[tuple[int, int]]] = {}
        for n, (job, look) in enumerate(zip(jobs, lookups, strict=True)):
            if 0 in refused[n]:
                continue
            docs = [i + 1 for i in range(len(job.documents)) if i not in look.hits and i + 1 not in refused[n]]
            query = [0] if job.query is not None else []  # an embedding job has none
            by_budget.setdefault(job.budget, []).extend((n, j) for j in ([*query, *docs] if docs else []))
        for budget, wanted in by_budget.items():
            specs = [_side(jobs[n], j) for n, j in wanted]
            for (n, j), side in zip(wanted, self.resolver.resolve_sides(specs, budget, known), strict=True):
                out[n][j] = side
        return out

    def look_up_resolved(self, job: JobInput, sides: Sides, look: Lookup) -> Lookup:
        """Stage 2, again: every fetched pair keyed by the bytes decoded; the keys new since stage 1 looked up."""
        if not self._caches(job) or (job.query is not None and not isinstance(sides[0], ResolvedSide)):
            return look
        query = NO_QUERY if job.query is None else from_resolved(sides[0])  # type: ignore[arg-type]
        job_keys = JobKeys(self._context(job), query) if query is not None else None
        keys, fresh = dict(look.keys), {}
        for i, doc in enumerate(sides[1:]):
            if i in look.hits or not isinstance(doc, ResolvedSide):
                continue
            key = job_keys.key(from_resolved(doc)) if job_keys is not None else None
            if key is None:
                keys.pop(i, None)
            elif keys.get(i) != key:
                keys[i] = fresh[i] = key
        hits = self._get(set(fresh.values()))
        return Lookup(keys, {**look.hits, **{i: hits[k] for i, k in fresh.items() if k in hits}})

    def prepare_job(self, job: JobInput, sides: Sides, look: Lookup, media_s: float = 0.0) -> PreparedJob:
        """Stage 3: the job's pairs. Any exception the model raises for one document is that document's error;
        one raised for the whole job is the job's: never the round's."""
        query, documents = sides[0], sides[1:]
        if job.retry_media and (transient := transient_failure(sides)) is not None:
            return PreparedJob(job, lookup=look, retry=transient, media_s=media_s)
        errors = {i: str(d) for i, d in enumerate(documents) if isinstance(d, MediaError)}
        if isinstance(query, MediaError):
            return PreparedJob(job, {}, errors, look, f"query: {query}", query, media_s=media_s)
        usable = [(i, d) for i, d in enumerate(documents) if isinstance(d, ResolvedSide) and i not in look.hits]
        if (query is None and job.query is not None) or not usable:
            # every document came from the cache or was refused unfetched: nothing to prepare
            return PreparedJob(job, {}, errors, look,
                               _all_failed(errors, job) if errors and not look.hits else None, media_s=media_s)
        if job.max_tokens_per_doc:  # Cohere's max_tokens_per_doc: each document's texts cut first
            usable = [(i, self.model.cap_texts(d, job.max_tokens_per_doc)) for i, d in usable]
        try:
            prepared = self.model.prepare_job(job.instruction, query, [d for _, d in usable])  # type: ignore[arg-type]
        except Exception as exc:  # a model bug or hostile input fails this job alone
            logger.exception("preparing job %s failed", job.id)
            return PreparedJob(job, {}, errors, look, f"could not prepare the job: {type(exc).__name__}: {exc}",
                               media_s=media_s)
        pairs: dict[int, Prepared] = {}
        for (i, _), pair in zip(usable, prepared, strict=True):
            if isinstance(pair, PairTooLong):
                errors[i] = f"{job.field}[{i}]: {pair}{self.too_long_hint}"
            elif isinstance(pair, Exception):
                errors[i] = f"{job.field}[{i}]: {pair}"
            else:
                pairs[i] = pair
        error = _all_failed(errors, job) if not pairs and not look.hits else None
        return PreparedJob(job, pairs, errors, look, error, media_s=media_s)

    def plan(self, jobs: list[PreparedJob], media_s: float = 0.0, hits: int = 0, misses: int = 0) -> Plan:
        """Stage 4: passes under the token budget over every pair of the round; a job's pairs that share a
        prefix are planned as its suffixes (``plan_with_prefixes``)."""
        units = [Unit(n, i, pair) for n, job in enumerate(jobs) if not (job.error or job.retry)
                 for i, pair in job.pairs.items()]
        pairs = [u.pair for u in units]
        batches = plan_with_prefixes([p.length for p in pairs], prefix_marks(pairs), self.batch.max_tokens,
                                     self.batch.max_pairs) if units else []
        return Plan(jobs, units, batches, media_s, hits, misses)

    # stages 5-6 ---------------------------------------------------------------------------------------------------
    def score(self, plan: Plan, keep: Callable[[list[str]], Collection[str]] | None = None) -> Iterator[Pass]:
        """Stage 5 and 6: the passes, one per iteration; each yields the outcomes of the jobs it completed.
        ``keep(job_ids)``, asked before each pass, says which of its jobs are still wanted (the others, cancelled
        meanwhile, are dropped unscored). The round's fresh scores go to the cache, in one call, once the pass
        that scores its last pair has run."""
        tally = _Tally(plan)
        ready = [tally.outcome(n) for n, job in enumerate(plan.jobs) if not job.retry and tally.pending[n] == 0]
        if ready:
            yield Pass(ready, [], {}, left=len(plan.batches))
        stored = False
        for b, batch in enumerate(plan.batches):
            units = [plan.units[i] for i in batch if tally.live(plan.units[i].job)]
            if keep is not None and units:
                wanted = set(keep(list(dict.fromkeys(plan.jobs[u.job].job.id for u in units))))
                tally.drop({u.job for u in units if plan.jobs[u.job].job.id not in wanted})
                units = [u for u in units if tally.live(u.job)]
            if units:
                done = self._forward(plan, tally, units, len(plan.batches) - b - 1)
                if not stored and not any(tally.pending[n] for n in range(len(plan.jobs)) if tally.live(n)):
                    self._put(tally.fresh())  # before the last yield: a caller may stop once its jobs ended
                    stored = True
                yield done
        if not stored:  # the last passes were of jobs cancelled meanwhile
            self._put(tally.fresh())

    def _forward(self, plan: Plan, tally: _Tally, units: list[Unit], left: int) -> Pass:
        t0 = time.perf_counter()
        outcomes = score_isolating(lambda us: self.model.forward([u.pair for u in us]), units)
        seconds = time.perf_counter() - t0
        for unit, score in outcomes:
            tally.settle(unit, score, seconds / len(units))
        own = own_lengths([u.pair for u in units])  # a suffix's padding is its own, the prefix is not padded
        ids = [plan.jobs[u.job].job.id for u in units]
        done = sorted({u.job for u in units if tally.pending[u.job] == 0})
        return Pass([tally.outcome(n) for n in done], [(i, u.index) for i, u in zip(ids, units, strict=True)],
                    {i: ids.count(i) for i in dict.fromkeys(ids)}, len(set(ids)),
                    sum(1 for _, s in outcomes if isinstance(s, BaseException)), seconds,
                    padding_ratio(own, [list(range(len(units)))]), left)

    def _caches(self, job: JobInput) -> bool:
        return self.scores is not None and job.use_cache and self.scores.available()

    def _context(self, job: JobInput) -> JobContext:
        if self._identity is None:
            self._identity = self.model.cache_identity()
        return JobContext(self._identity, job.instruction, job.max_tokens_per_doc, job.budget, self.exif_transpose)

    def _get(self, keys: set[str]) -> Mapping[str, Any]:
        """Cached scores and vectors by key: a vector comes back as its float32 array; a value of the other
        kind than this model's task (a stray) is left out."""
        if not keys or self.scores is None:
            return {}
        found = self.scores.get_many(sorted(keys)) or {}
        if self.model.capabilities.task == "embed":
            return {k: np.frombuffer(v[len(VECTOR_PREFIX):], dtype="<f4").astype(np.float32)
                    for k, v in found.items() if isinstance(v, bytes)}
        return {k: v for k, v in found.items() if isinstance(v, float)}

    def _put(self, scores: dict[str, Any]) -> None:
        if scores and self.scores is not None:
            if self.model.capabilities.task == "embed":
                scores = {k: VECTOR_PREFIX + np.asarray(v, dtype="<f4").tobytes() for k, v in scores.items()}
            self.scores.put_many(scores)


class _Tally:
    """Stage 6's bookkeeping while the passes run: scores so far, errors, pairs pending, per job."""

    def __init__(self, plan: Plan) -> None:
        self.plan = plan
        self.scores = [[job.lookup.hits.get(i) for i in range(len(job.job.documents))] for job in plan.jobs]
        self.errors = [dict(job.errors) for job in plan.jobs]
        self.pending = [0] * len(plan.jobs)
        for unit in plan.units:
            self.pending[unit.job] += 1
        self.seconds = [0.0] * len(plan.jobs)
        self.dropped: set[int] = set()

    def live(self, n: int) -> bool:
        return n not in self.dropped

    def drop(self, jobs: set[int]) -> None:
        self.dropped |= jobs

    def settle(self, unit: Unit, score: float | BaseException, seconds: float) -> None:
        if isinstance(score, BaseException):
            job = self.plan.jobs[unit.job].job
            what = "embedding" if job.task == "embed" else "scoring"
            self.errors[unit.job][unit.index] = f"{job.field}[{unit.index}]: {what} failed: {score}"
        else:
            self.scores[unit.job][unit.index] = score
        self.seconds[unit.job] += seconds
        self.pending[unit.job] -= 1

    def outcome(self, n: int) -> JobOutcome:
        job = self.plan.jobs[n]
        return JobOutcome(job.job, self.scores[n], self.errors[n], job.error, job.query_error,
                          tuple(sorted(job.lookup.hits)), sum(p.length for p in job.pairs.values()), job.media_s,
                          self.seconds[n])

    def fresh(self) -> dict[str, float]:
        """Scores computed this round, by cache key."""
        out: dict[str, float] = {}
        for unit in self.plan.units:
            key = self.plan.jobs[unit.job].lookup.keys.get(unit.index)
            score = self.scores[unit.job][unit.index]
            if key is not None and score is not None:
                out[key] = score
        return out


def _side(job: JobInput, j: int) -> Side:
    """A job's side by position: 0 its query (only a job with one asks), i + 1 its document i."""
    side = job.documents[j - 1] if j else job.query
    if side is None:
        raise ValueError(f"job {job.id} has no query")
    return side


def _all_failed(errors: Mapping[int, str], job: JobInput) -> str:
    return f"every {job.item} failed: " + "; ".join(errors[i] for i in sorted(errors)[:3])


def transient_failure(sides: Sequence[ResolvedSide | MediaError | None]) -> MediaError | None:
    """The first medium of a job that failed only transiently (outlived the fetch retries), if any."""
    for side in sides:
        if isinstance(side, MediaError) and isinstance(side.__cause__, TransientError):
            return side
    return None


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
