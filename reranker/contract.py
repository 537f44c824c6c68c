"""The model contract: everything the engine (``rerankq.models.engine``, the worker, the benchmarks) needs from a
reranking model, and nothing more. Qwen3-VL-Reranker (``rerankq.models.qwen3vl``) is one implementation and the
deterministic fake (``rerankq.models.fake``) another; ``rerankq.models.loading`` picks one from the model SPEC or the
checkpoint's ``config.json``.

The life of a pair, in the order the engine calls it (as LitServe's ``setup → decode → predict → encode``):

0. ``model.capabilities`` says what it reads; a side holding anything else is refused before it is fetched.
1. ``model.preprocessor`` turns decoded media into the model's inputs; the media layer
   (``rerankq.media.resolver.MediaResolver``) calls it while it fetches, and caches what it returns.
2. ``model.prepare(instruction, query, document)`` builds one pair from resolved sides: CPU work, run on
   several threads while the previous batch is on the device. It raises ``PairTooLong`` (or any
   ``PermanentError``) for a pair that cannot be scored; the engine reports that document alone.
3. ``model.forward(pairs)`` scores one batch the planner (``rerankq.models.batching``) formed under a token budget
   from each pair's ``length``, and returns exactly one float in [0, 1] per pair, in order. It never drops,
   reorders or merges pairs. One caller at a time (the scoring thread).

Shared-prefix scoring (the pairs of one job start with the same tokens: system prompt, instruction, query):
``prepare_job`` prepares a job's pairs together and may give them one ``prefix`` (``Prepared.prefix``). The
planner then budgets each such pair as a suffix of that prefix (``prefix_marks``,
``rerankq.models.batching.plan_with_prefixes``: suffixes of one prefix in consecutive passes, the prefix's keys
and values counted while held), and ``forward`` computes each prefix once, in the first pass that needs it,
and lets it go after the pass that scores its last pair. Scores do not change.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Protocol, TypeVar

from rerankq.capabilities import Capabilities
from rerankq.media.resolver import Preprocessor
from rerankq.media.sides import ResolvedSide


class SharedPrefix(Protocol):
    """Tokens several pairs of one job start with, computed once by ``forward``."""

    @property
    def length(self) -> int: ...


class Prepared(Protocol):
    """A pair ready for ``forward``. ``length`` is what it costs a forward pass, in tokens; with a
    ``prefix``, its pass costs ``length - prefix.length`` tokens plus the held prefix."""

    @property
    def length(self) -> int: ...

    @property
    def prefix(self) -> SharedPrefix | None: ...


P = TypeVar("P", bound=Prepared)


class RerankModel(Protocol[P]):
    """A loaded reranking model pinned to one device."""

    @property
    def name(self) -> str:
        """The model's name as results, logs and metrics show it (a fake's name starts with ``fake:``); with
        quantized weights, their label in brackets: ``NAME [int8]`` (``rerankq.models.quantization``). Jobs are
        routed by the model SPEC, never by this name."""

    @property
    def device(self) -> str:
        """Where it runs: ``cpu``, ``cuda:0``, or ``modelled h100`` for a fake that models a device."""

    @property
    def capabilities(self) -> Capabilities:
        """What it serves (``rerankq.capabilities``): its task, the modalities it reads on each side, and its own
        defaults (max length, instruction, vision budget). The engine refuses, before any fetch, a side that
        holds a modality it does not read; workers publish it so that producers refuse such jobs at submit."""

    @property
    def preprocessor(self) -> Preprocessor | None:
        """How decoded images and videos become this model's inputs (see ``rerankq.media.resolver.Preprocessor``);
        None for a model that reads neither (no stub: the media layer then refuses every medium, and the engine
        refuses the side before that, from ``capabilities``)."""

    def prepare(self, instruction: str, query: ResolvedSide, document: ResolvedSide) -> P:
        """One (query, document) pair, ready for ``forward``. Raises ``PairTooLong`` when it cannot fit."""

    def prepare_job(self, instruction: str, query: ResolvedSide,
                    documents: Sequence[ResolvedSide]) -> list[P | Exception]:
        """Every pair of one job, in document order; a pair that cannot be prepared is its exception. An
        implementation may prepare them together (one tokenisation of the query, a shared prefix)."""

    def cap_texts(self, side: ResolvedSide, max_tokens: int) -> ResolvedSide:
        """The side with its texts cut to ``max_tokens`` of this model's tokens in all, from the tail (a job's
        ``max_tokens_per_doc``, Cohere's field); images and videos are kept whole."""

    def forward(self, pairs: Sequence[P]) -> list[float]:
        """Score one batch: one relevance score in [0, 1] per pair, in input order, none dropped. A prefix
        of these pairs not computed yet is computed first; one whose last pair this batch scores is let go."""

    def cache_identity(self) -> str:
        """Everything about this loaded model that can move a score, as one string: its weights (a checkpoint's
        content hash, or the ``random:`` SPEC and seed), their quantization, dtype, attention implementation,
        device *type* (cuda, cpu: never the index), the implementation's scoring version (bumped whenever prompt
        building or preprocessing changes) and the preprocessing settings the model applies itself
        (``max_length``). Two
        models with the same identity give a pair the same score (fp32: within 1e-5), so the score cache keys
        on it. The first call may take a while (hashing a checkpoint); the answer is then remembered."""


def instruction_for(model: RerankModel[Any], override: str | None) -> str:
    """The instruction of a job that gives none: the setting's when set, else the model's own (none: "")."""
    return override if override is not None else (model.capabilities.instruction or "")


def prepare_each(model: RerankModel[P], instruction: str, query: ResolvedSide,
                 documents: Sequence[ResolvedSide]) -> list[P | Exception]:
    """``prepare_job`` for models that prepare pairs one at a time: ``prepare`` per document."""
    out: list[P | Exception] = []
    for document in documents:
        try:
            out.append(model.prepare(instruction, query, document))
        except Exception as exc:  # one document's failure is that document's
            out.append(exc)
    return out


def prefix_marks(pairs: Sequence[Prepared]) -> list[tuple[int, int] | None]:
    """What the planner needs of each pair's shared prefix: (prefix id, prefix tokens), None without one."""
    ids: dict[int, int] = {}
    return [None if p.prefix is None else (ids.setdefault(id(p.prefix), len(ids)), p.prefix.length)
            for p in pairs]


def own_lengths(pairs: Sequence[Prepared]) -> list[int]:
    """Tokens each pair runs in a pass of its own: all of them, or those after its shared prefix."""
    return [p.length - (p.prefix.length if p.prefix is not None else 0) for p in pairs]
