"""Preparing one input: prompt → token ids with vision tokens expanded → the official truncation.

The official ``Qwen3VLEmbedder._preprocess_inputs`` hands the rendered prompts to the Qwen3-VL processor with
``truncation=True, max_length=8192``: the processor expands the vision pads, then the tokenizer keeps the
first ``max_length`` tokens (right truncation). A cut through vision tokens fails there (tokens and features
no longer match); here it is refused up front, naming ``max_length``.
"""

from __future__ import annotations

from dataclasses import dataclass

from rerankq.errors import PairTooLong
from rerankq.media.sides import ResolvedSide
from rerankq.models.qwen3vl.preparing import PairPreparer, _expand_pads, _expand_videos
from rerankq.models.qwen3vl.tokens import IMAGE_PAD_ID, VIDEO_PAD_ID
from rerankq.models.qwen3vl.vision import VisionInput
from rerankq.models.qwen3vl_embed.prompt import prompt_pieces

MAX_LENGTH = 8192  # the official embedder's default


@dataclass
class PreparedInput:
    """An input ready for the model: token ids (truncated) and its vision inputs in prompt order."""

    input_ids: list[int]
    vision: list[VisionInput]
    truncated: bool = False

    @property
    def length(self) -> int:
        return len(self.input_ids)

    @property
    def prefix(self) -> None:
        """Inputs share no prefix (the round engine's planner asks)."""
        return None


class InputPreparer:
    """Turns (instruction, resolved input) into ``PreparedInput``; the tokenizer is the model's."""

    def __init__(self, tokenizer, max_length: int = MAX_LENGTH) -> None:  # type: ignore[no-untyped-def]
        if max_length < 1:
            raise ValueError(f"max_length must be positive, got {max_length}")
        self.max_length = max_length
        self._text = PairPreparer(tokenizer)  # its tokenize: template specials by id, texts as text

    def render(self, instruction: str | None, item: ResolvedSide) -> str:
        """The prompt as one string, videos expanded to their timestamps (what the processor sees)."""
        return "".join(text for text, _ in self._pieces(instruction, item))

    def _pieces(self, instruction: str | None, item: ResolvedSide) -> list[tuple[str, bool]]:
        pieces = prompt_pieces(instruction, list(item.texts), [v.kind for v in item.vision])
        videos = [v for v in item.vision if v.kind == "video"]
        return _expand_videos(pieces, videos) if videos else pieces

    def prepare(self, instruction: str | None, item: ResolvedSide) -> PreparedInput:
        kinds = [v.kind for v in item.vision]
        if kinds != sorted(kinds, key=lambda k: k != "video"):
            raise ValueError("an input's vision items must come videos first, then images (the prompt order)")
        ids = _expand_pads(self._text.tokenize(self._pieces(instruction, item)), item.vision)
        if len(ids) <= self.max_length:
            return PreparedInput(ids, list(item.vision))
        if any(t in (IMAGE_PAD_ID, VIDEO_PAD_ID) for t in ids[self.max_length:]):
            raise PairTooLong(f"the input's {len(ids)} tokens exceed max_length {self.max_length} and cutting "
                              "them would cut through its images or videos")
        return PreparedInput(ids[:self.max_length], list(item.vision), truncated=True)
