"""Preparing a pair: prompt → token ids with vision tokens expanded → official truncation.

Preparation is CPU work separate from the forward pass (``rerankq.models.qwen3vl.model.Scorer.score``), so a worker can
prepare the next batch while the current one runs. A prepared pair holds references to its query's vision
tensors; the query of a job is resolved once and shared by all its pairs.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import replace

from rerankq.errors import PairTooLong
from rerankq.media.sides import ResolvedSide
from rerankq.models.qwen3vl.pairs import PreparedPair
from rerankq.models.qwen3vl.prompt import Piece, prompt_pieces
from rerankq.models.qwen3vl.tokens import IMAGE_PAD_ID, VIDEO_PAD_ID
from rerankq.models.qwen3vl.vision import MERGE, VisionInput

KEEP_TAIL = 5  # "<|im_end|>\n<|im_start|>assistant\n" is never truncated


def _kinds(side: ResolvedSide) -> list[str]:
    return [v.kind for v in side.vision]


def _video_pieces(item: VisionInput) -> list[Piece]:
    """What a video becomes before pad expansion: ``<t seconds>`` + one pad group per temporal patch.

    As transformers 4.57.3's Qwen3VLProcessor (the version the official script pins): the template's
    ``<|vision_start|><|video_pad|><|vision_end|>`` is replaced whole by the per-group expansion.
    """
    assert item.timestamps is not None
    group = [("<|vision_start|>", True), ("<|video_pad|>", True), ("<|vision_end|>", True)]
    return [piece for t in item.timestamps for piece in [(f"<{t:.1f} seconds>", False), *group]]


def _expand_videos(pieces: list[Piece], videos: list[VisionInput]) -> list[Piece]:
    out: list[Piece] = []
    k = 0
    for i, piece in enumerate(pieces):
        if piece == ("<|video_pad|>", True):
            out[-1:] = _video_pieces(videos[k])  # replaces the <|vision_start|> just added ...
            k += 1
        elif i and pieces[i - 1] == ("<|video_pad|>", True):
            continue  # ... and drops the template's <|vision_end|>
        else:
            out.append(piece)
    return out


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

    def pieces(self, instruction: str, query: ResolvedSide, document: ResolvedSide) -> list[Piece]:
        """The prompt as pieces, videos expanded to their timestamps, one pad per vision group."""
        pieces = prompt_pieces(instruction, (query.texts, _kinds(query)), (document.texts, _kinds(document)))
        videos = [item for item in [*query.vision, *document.vision] if item.kind == "video"]
        return _expand_videos(pieces, videos) if videos else pieces

    def render(self, instruction: str, query: ResolvedSide, document: ResolvedSide) -> str:
        """The prompt as one string (what the official script's processor sees)."""
        return "".join(text for text, _ in self.pieces(instruction, query, document))

    def tokenize(self, pieces: list[Piece]) -> list[int]:
        """Token ids of the pieces: the template's special tokens by id; each run of text between them
        tokenized as text, so a special-token string a user wrote stays text. For text without such strings
        this is exactly the tokenizer's reading of the whole prompt (it splits at special tokens first)."""
        runs: list[list[str]] = [[]]
        specials: list[int] = []
        for text, special in pieces:
            if special:
                specials.append(self.tokenizer.convert_tokens_to_ids(text))
                runs.append([])
            else:
                runs[-1].append(text)
        texts = ["".join(run) for run in runs]
        encoded = self.tokenizer(texts, add_special_tokens=False, split_special_tokens=True)["input_ids"]
        ids: list[int] = list(encoded[0])
        for special_id, text_ids in zip(specials, encoded[1:], strict=True):
            ids += [special_id, *text_ids]
        return ids

    def prepare(self, instruction: str, query: ResolvedSide, document: ResolvedSide) -> PreparedPair:
        vision = [*query.vision, *document.vision]
        ids = _expand_pads(self.tokenize(self.pieces(instruction, query, document)), vision)
        truncated = self.truncate(ids)
        return PreparedPair(truncated, vision, truncated=len(truncated) != len(ids))

    def cap_texts(self, side: ResolvedSide, max_tokens: int) -> ResolvedSide:
        """The side with its texts cut to ``max_tokens`` tokens in all, from the tail (Cohere's
        ``max_tokens_per_doc``); vision inputs are kept whole."""
        left, texts = max_tokens, []
        for text in side.texts:
            ids = self.tokenizer(text, add_special_tokens=False, split_special_tokens=True)["input_ids"]
            texts.append(text if len(ids) <= left else self.tokenizer.decode(ids[:left]))
            left = max(left - len(ids), 0)
        return replace(side, texts=texts)

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
