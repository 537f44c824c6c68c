"""The embedding prompt, as the official Qwen3-VL-Embedding formats an input.

Official ``Qwen3VLEmbedder.format_model_input`` (src/models/qwen3_vl_embedding.py): the instruction (stripped,
a full stop added unless it ends in punctuation; default "Represent the user's input.") is the *system*
message; the user message holds the input's videos, then its images, then its texts ("NULL" when the input is
empty); the chat template is applied with the generation prompt. Rendered by the Qwen3-VL chat template:

    <|im_start|>system\\n{instruction}<|im_end|>\\n<|im_start|>user\\n{vision}{texts}<|im_end|>\\n<|im_start|>assistant\\n
"""

from __future__ import annotations

import unicodedata

from rerankq.models.qwen3vl.prompt import EMPTY_SIDE, Piece

DEFAULT_INSTRUCTION = "Represent the user's input."
_PLACEHOLDER = {"image": ("<|vision_start|>", "<|image_pad|>", "<|vision_end|>"),
                "video": ("<|vision_start|>", "<|video_pad|>", "<|vision_end|>")}


def normalize_instruction(instruction: str | None) -> str:
    """Stripped, ending in punctuation (a "." added otherwise); the default when None or blank."""
    text = (instruction or "").strip()
    if not text:
        return DEFAULT_INSTRUCTION
    return text if unicodedata.category(text[-1]).startswith("P") else text + "."


def prompt_pieces(instruction: str | None, texts: list[str], kinds: list[str]) -> list[Piece]:
    """The prompt of one input as pieces (``kinds``: its vision items in order, videos first), the template's
    special tokens apart from the texts so that a user's text is never read as a control token."""
    user: list[Piece] = [("user\n", False)]
    if not texts and not kinds:
        user.append((EMPTY_SIDE, False))
    for kind in kinds:
        user += [(token, True) for token in _PLACEHOLDER[kind]]
    user += [(text, False) for text in texts]
    return [
        ("<|im_start|>", True), ("system\n" + normalize_instruction(instruction), False), ("<|im_end|>", True),
        ("\n", False), ("<|im_start|>", True), *user, ("<|im_end|>", True), ("\n", False),
        ("<|im_start|>", True), ("assistant\n", False),
    ]

