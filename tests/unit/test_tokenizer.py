"""The tokenizer built from qwen.tiktoken is Qwen's: real ids for the scoring and special tokens."""

from __future__ import annotations

import pytest

from rerankq.models.qwen3vl.tokenizer import cached_qwen_tokenizer


@pytest.fixture(scope="module")
def tok(tmp_path_factory: pytest.TempPathFactory):  # type: ignore[no-untyped-def]
    return cached_qwen_tokenizer(tmp_path_factory.mktemp("tok"))


def test_scoring_tokens(tok) -> None:  # type: ignore[no-untyped-def]
    assert tok.get_vocab()["yes"] == 9693
    assert tok.get_vocab()["no"] == 2152


@pytest.mark.parametrize(("token", "token_id"), [
    ("<|endoftext|>", 151643), ("<|im_start|>", 151644), ("<|im_end|>", 151645), ("<|vision_start|>", 151652),
    ("<|vision_end|>", 151653), ("<|image_pad|>", 151655), ("<|video_pad|>", 151656), ("</think>", 151668),
])
def test_special_token_ids(tok, token: str, token_id: int) -> None:  # type: ignore[no-untyped-def]
    assert tok.convert_tokens_to_ids(token) == token_id
    assert tok(token, add_special_tokens=False)["input_ids"] == [token_id]


def test_qwen_pretokenisation(tok) -> None:  # type: ignore[no-untyped-def]
    # Qwen splits digits one by one and keeps the leading space on words.
    assert tok("Hello world 123", add_special_tokens=False)["input_ids"] == [9707, 1879, 220, 16, 17, 18]


def test_vision_tokens_are_special_for_truncation(tok) -> None:  # type: ignore[no-untyped-def]
    special = set(tok.all_special_ids)
    assert {151643, 151644, 151645, 151652, 151653, 151655, 151656} <= special
    assert tok.pad_token_id == 151643 and tok.padding_side == "left"


def test_cache_round_trip(tmp_path) -> None:  # type: ignore[no-untyped-def]
    first = cached_qwen_tokenizer(tmp_path)
    second = cached_qwen_tokenizer(tmp_path)  # loaded from disk
    text = "<|im_start|>user\n<Query>:a blue nylon backpack ünïcode 🎒<|im_end|>"
    assert first(text)["input_ids"] == second(text)["input_ids"]
