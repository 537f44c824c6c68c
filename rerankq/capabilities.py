"""What a model can serve, as the model declares it (``rerankq.models.contract.RerankModel.capabilities``) and as
workers publish it in the registry (``rerankq.registry``) for producers to check a job against at submit.

- ``task``: ``rerank`` ((query, document) pairs → one score each) or ``embed`` (one input → one vector).
- ``query`` / ``documents``: the modalities each side may hold (``text``, ``image``, ``video``).
- the model's own defaults: ``max_length`` (tokens per pair), ``instruction`` (None: the model takes none),
  the vision budget (``image_min_tokens``, ``image_max_tokens``, ``video_max_tokens``, ``max_frames``; None for
  a model that reads no image or video) and ``embedding_dim`` (embedding models only). The settings of the same
  names override them where set; unset, the model's default applies.

``refusal`` (and ``side_reason`` for one side) says why a job cannot be served by a model, naming the model
and what it reads; the SDK, the gateway and the worker all use it, so the three agree.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping
from dataclasses import asdict, dataclass
from typing import Any, Literal

Task = Literal["rerank", "embed"]
MODALITIES = ("text", "image", "video")
TEXT_ONLY: frozenset[str] = frozenset({"text"})
ALL_MODALITIES: frozenset[str] = frozenset(MODALITIES)


@dataclass(frozen=True)
class Capabilities:
    """A model's task, the modalities it reads on each side and its defaults (see the module doc)."""

    task: Task = "rerank"
    query: frozenset[str] = TEXT_ONLY
    documents: frozenset[str] = TEXT_ONLY
    max_length: int = 512
    instruction: str | None = None
    image_min_tokens: int | None = None
    image_max_tokens: int | None = None
    video_max_tokens: int | None = None
    max_frames: int | None = None
    embedding_dim: int | None = None

    def __post_init__(self) -> None:
        for side in ("query", "documents"):
            unknown = set(getattr(self, side)) - ALL_MODALITIES
            if unknown:
                raise ValueError(f"capabilities.{side}: unknown modalities {sorted(unknown)} "
                                 f"(known: {', '.join(MODALITIES)})")
        if self.task not in ("rerank", "embed"):
            raise ValueError(f"capabilities.task {self.task!r} is not rerank or embed")

    @property
    def reads_vision(self) -> bool:
        return bool((self.query | self.documents) - TEXT_ONLY)

    def describe(self) -> str:
        """``rerank: query text+image, documents text`` (what error messages show)."""
        return (f"{self.task}: query {'+'.join(sorted_modalities(self.query))}, "
                f"documents {'+'.join(sorted_modalities(self.documents))}")

    def to_json(self) -> str:
        """One string for the registry hash."""
        data = asdict(self)
        data["query"], data["documents"] = sorted_modalities(self.query), sorted_modalities(self.documents)
        return json.dumps(data, sort_keys=True)

    @classmethod
    def from_json(cls, text: str) -> Capabilities:
        data = json.loads(text)
        known = {k: v for k, v in data.items() if k in cls.__dataclass_fields__}
        for side in ("query", "documents"):
            if side in known:
                known[side] = frozenset(known[side])
        return cls(**known)


def sorted_modalities(modalities: Iterable[str]) -> list[str]:
    return [m for m in MODALITIES if m in set(modalities)]


def side_modalities(side: Any) -> set[str]:
    """The modalities of one side as a job gives it: a dict (``text``, ``image``, ``video``), a string (text),
    or an object with ``texts``/``images``/``videos`` or ``text``/``image``/``video`` attributes."""
    if side is None:
        return set()
    if isinstance(side, str):
        return {"text"}
    if isinstance(side, Mapping):
        return {m for m in MODALITIES if side.get(m) not in (None, [], "")}
    found = set()
    for m in MODALITIES:
        value = getattr(side, m + "s", None)
        if value is None:
            value = getattr(side, m, None)
        if value not in (None, [], ""):
            found.add(m)
    return found


def side_reason(caps: Capabilities, role: str, side: Any) -> str | None:
    """Why ``side`` (``role``: ``query`` or ``documents``) cannot go to a model of ``caps``, or None:
    ``reads text documents only (rerank: ...); this document holds image``."""
    allowed = caps.query if role == "query" else caps.documents
    extra = side_modalities(side) - allowed
    if not extra:
        return None
    what = "query" if role == "query" else "document"
    plural = "queries" if role == "query" else "documents"
    return (f"reads {'+'.join(sorted_modalities(allowed))} {plural} only ({caps.describe()}); "
            f"this {what} holds {'+'.join(sorted_modalities(extra))}")


def refusal(model: str, caps: Capabilities, task: str, query: Any = None,
            documents: Iterable[Any] = (), dimensions: int | None = None) -> tuple[str, str] | None:
    """Why a job of ``task`` with this query and these documents (an embedding job: no query, its inputs as
    documents; ``dimensions``, the Matryoshka size it asks) cannot be served by ``model``, or None: the field at
    fault (``task``, ``dimensions``, ``query``, ``documents[2]``, ``inputs[2]``) and the reason, naming the model
    and what it reads."""
    if task != caps.task:
        return "task", f"model {model!r} serves {caps.task} jobs ({caps.describe()}), not {task} jobs"
    if dimensions is not None and caps.embedding_dim is not None and dimensions > caps.embedding_dim:
        return "dimensions", (f"{dimensions} is over the {caps.embedding_dim} dimensions of model {model!r}'s "
                              "vectors")
    why = side_reason(caps, "query", query)
    if why:
        return "query", f"model {model!r} {why}"
    field = "inputs" if task == "embed" else "documents"
    for i, document in enumerate(documents):
        why = side_reason(caps, "documents", document)
        if why:
            return f"{field}[{i}]", f"model {model!r} {why}"
    return None
