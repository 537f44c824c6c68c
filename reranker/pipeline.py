"""Preparing a pair: prompt → token ids with vision tokens expanded → official truncation.

Preparation is CPU work separate from the forward pass (``reranker.model.Scorer.score``), so a worker can
prepare the next batch while the current one runs. A prepared pair holds references to its query's vision
tensors; the query of a job is resolved once and shared by all its pairs.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from reranker.prompt import VIDEO_PLACEHOLDER, render_parts
from reranker.vision import MERGE, VisionInput

if TYPE_CHECKING:
    from reranker.sharing import JobPrefix

IMAGE_PAD_ID = 151655
VIDEO_PAD_ID = 151656
KEEP_TAIL = 5  # "<|im_end|>\n<|im_start|>assistant\n" is never truncated


class PairTooLong(ValueError):
    """A pair's special and vision tokens alone exceed the length budget (text cannot be cut further)."""


@dataclass
class ResolvedSide:
    """A side whose media are decoded: texts, and vision inputs in prompt order (videos, then images)."""

    texts: list[str] = field(default_factory=list)
    vision: list[VisionInput] = field(default_factory=list)

    @property
    def kinds(self) -> list[str]:
        return [v.kind for v in self.vision]


@dataclass
class PreparedPair:
    """A pair ready for the model: token ids (truncated) and its vision inputs in prompt order."""

    input_ids: list[int]
    vision: list[VisionInput]
    truncated: bool = False
    prefix: JobPrefix | None = None  # set when the job's pairs share a prefix computed once (reranker.sharing)

    @property
    def length(self) -> int:
        return len(self.input_ids)

    @property
    def suffix_length(self) -> int:
        """Tokens this pair runs in its own pass: all of them, or those after its shared prefix."""
        return self.length - (self.prefix.length if self.prefix else 0)


def _video_text(item: VisionInput) -> str:
    """The text a video becomes before pad expansion: ``<t seconds>`` + one pad group per temporal patch.

    As transformers 4.57.3's Qwen3VLProcessor (the version the official script pins): the template's
    ``<|vision_start|><|video_pad|><|vision_end|>`` is replaced whole by the per-group expansion.
    """
    assert item.timestamps is not None
    return "".join(f"<{t:.1f} seconds><|vision_start|><|video_pad|><|vision_end|>" for t in item.timestamps)


def _expand_pads(ids: list[int], vision: Sequence[VisionInput]) -> list[int]:
    """Replace each single pad id with the vision input's token count (per temporal group for videos)."""
    runs: list[int] = []
    for item in vision:
        t, h, w = item.grid_thw
        per_group = h * w // (MERGE * MERGE)
        runs += [per_group] * t if item.kind == "video" else [t * per_group]
    out: list[int] = []
    k = 0
    for token in ids:
        if token in (IMAGE_PAD_ID, VIDEO_PAD_ID):
            out += [token] * runs[k]
            k += 1
        else:
            out.append(token)
    if k != len(runs):
        raise RuntimeError(f"prompt has {k} vision pads but {len(runs)} vision groups")
    return out


class PairPreparer:
    """Turns (instruction, query, document) into ``PreparedPair``; the tokenizer is the model's."""

    def __init__(self, tokenizer, max_length: int = 10240) -> None:  # type: ignore[no-untyped-def]
        self.tokenizer = tokenizer
        self.max_length = max_length
        self.special_ids = frozenset(tokenizer.all_special_ids)

    def render(self, instruction: str, query: ResolvedSide, document: ResolvedSide) -> str:
        """The prompt with videos expanded to their timestamps and one pad per vision group."""
        text = render_parts(instruction, (query.texts, query.kinds), (document.texts, document.kinds))
        videos = [item for item in [*query.vision, *document.vision] if item.kind == "video"]
        if not videos:
            return text
        parts = text.split(VIDEO_PLACEHOLDER)
        return parts[0] + "".join(_video_text(v) + rest for v, rest in zip(videos, parts[1:], strict=True))

    def prepare(self, instruction: str, query: ResolvedSide, document: ResolvedSide) -> PreparedPair:
        vision = [*query.vision, *document.vision]
        ids = self.tokenizer(self.render(instruction, query, document), add_special_tokens=False)["input_ids"]
        ids = _expand_pads(ids, vision)
        truncated = self.truncate(ids)
        return PreparedPair(truncated, vision, truncated=len(truncated) != len(ids))

    def truncate(self, ids: list[int]) -> list[int]:
        """The official policy: keep every special token and the last 5 tokens; keep the first non-special
        tokens up to ``max_length`` (counted over everything but the last 5), drop the rest."""
        head, tail = ids[:-KEEP_TAIL], ids[-KEEP_TAIL:]
        if len(head) <= self.max_length:
            return ids
        n_special = sum(1 for t in head if t in self.special_ids)
        budget = self.max_length - n_special
        if budget < 0:
            raise PairTooLong(f"{n_special} special and vision tokens exceed max_length {self.max_length}")
        kept: list[int] = []
        for t in head:
            if t in self.special_ids:
                kept.append(t)
            elif budget > 0:
                kept.append(t)
                budget -= 1
        return kept + tail
