"""The embedding prompt, its token ids and truncation, Matryoshka cuts and the ``random:embed-*`` SPECs."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from rerankq.errors import ModelLoadError, PairTooLong
from rerankq.media.sides import ResolvedSide
from rerankq.models.options import LoadOptions
from rerankq.models.qwen3vl.tokenizer import cached_qwen_tokenizer
from rerankq.models.qwen3vl.tokens import IMAGE_PAD_ID, VIDEO_PAD_ID
from rerankq.models.qwen3vl.vision import VisionInput
from rerankq.models.qwen3vl_embed.loading import load_embedder
from rerankq.models.qwen3vl_embed.model import matryoshka
from rerankq.models.qwen3vl_embed.preparing import InputPreparer
from rerankq.models.qwen3vl_embed.prompt import DEFAULT_INSTRUCTION, normalize_instruction


@pytest.fixture(scope="module")
def preparer(tmp_path_factory: pytest.TempPathFactory) -> InputPreparer:
    return InputPreparer(cached_qwen_tokenizer(tmp_path_factory.mktemp("tok")))


def image(h: int, w: int) -> VisionInput:
    return VisionInput("image", torch.zeros((2 * h * w, 1536), dtype=torch.uint8), (1, h, w))


def video(t: int, h: int, w: int, times: list[float]) -> VisionInput:
    return VisionInput("video", torch.zeros((t * h * w, 1536), dtype=torch.uint8), (t, h, w), times)


@pytest.mark.parametrize(("given", "expected"), [
    (None, DEFAULT_INSTRUCTION), ("", DEFAULT_INSTRUCTION), ("   ", DEFAULT_INSTRUCTION),
    ("  Find the matching image ", "Find the matching image."), ("Is it a cat?", "Is it a cat?"),
    ("找到图片。", "找到图片。"), ("see (below)", "see (below)"), ("count 3", "count 3."),
])
def test_instruction_ends_in_punctuation_or_gets_a_full_stop(given: str | None, expected: str) -> None:
    assert normalize_instruction(given) == expected


def test_text_prompt_is_the_official_chat_template(preparer: InputPreparer) -> None:
    rendered = preparer.render("Describe it", ResolvedSide(texts=["a cat", " on a mat"]))
    assert rendered == ("<|im_start|>system\nDescribe it.<|im_end|>\n<|im_start|>user\na cat on a mat<|im_end|>\n"
                        "<|im_start|>assistant\n")
    assert "user\nNULL<|im_end|>" in preparer.render(None, ResolvedSide())
    assert f"system\n{DEFAULT_INSTRUCTION}<|im_end|>" in preparer.render(None, ResolvedSide())


def test_vision_comes_before_texts_and_videos_carry_timestamps(preparer: InputPreparer) -> None:
    item = ResolvedSide(texts=["caption"], vision=[video(2, 4, 4, [0.5, 1.5]), image(4, 6)])
    rendered = preparer.render(None, item)
    assert ("user\n<0.5 seconds><|vision_start|><|video_pad|><|vision_end|><1.5 seconds><|vision_start|>"
            "<|video_pad|><|vision_end|><|vision_start|><|image_pad|><|vision_end|>caption<|im_end|>") in rendered
    ids = preparer.prepare(None, item).input_ids
    assert ids.count(VIDEO_PAD_ID) == 2 * 4 * 4 // 4 and ids.count(IMAGE_PAD_ID) == 4 * 6 // 4
    with pytest.raises(ValueError, match="videos first"):
        preparer.prepare(None, ResolvedSide(vision=[image(2, 2), video(1, 2, 2, [0.0])]))


def test_a_users_control_token_stays_text(preparer: InputPreparer) -> None:
    ids = preparer.prepare(None, ResolvedSide(texts=["<|im_end|>"])).input_ids
    assert ids.count(preparer._text.tokenizer.convert_tokens_to_ids("<|im_end|>")) == 2  # the template's own


def test_truncation_keeps_the_first_max_length_tokens_and_never_cuts_vision(preparer: InputPreparer) -> None:
    long = ResolvedSide(texts=["word " * 200])
    whole = preparer.prepare(None, long)
    short = InputPreparer(preparer._text.tokenizer, max_length=30)
    cut = short.prepare(None, long)
    assert cut.truncated and not whole.truncated and cut.input_ids == whole.input_ids[:30]
    with pytest.raises(PairTooLong, match="max_length 30"):
        short.prepare(None, ResolvedSide(vision=[image(8, 8)]))
    with pytest.raises(ValueError, match="max_length"):
        InputPreparer(preparer._text.tokenizer, max_length=0)


def test_matryoshka_keeps_the_leading_components_at_unit_length() -> None:
    vectors = torch.randn(3, 16, generator=torch.Generator().manual_seed(0)) * 5
    cut = matryoshka(vectors, 4)
    assert cut.shape == (3, 4) and torch.allclose(cut.norm(dim=1), torch.ones(3))
    assert torch.allclose(cut * vectors[:, :4].norm(dim=1, keepdim=True), vectors[:, :4], atol=1e-5)
    assert torch.allclose(matryoshka(vectors, None).norm(dim=1), torch.ones(3))


def test_random_embed_specs() -> None:
    tiny = load_embedder("random:embed-tiny", LoadOptions(seed=3))
    assert tiny.hidden_size == 64 and "Qwen3-VL-Embedding-tiny" in tiny.name
    vectors = tiny.embed([ResolvedSide(texts=["a"]), ResolvedSide(texts=["b"])], dimensions=10)
    assert vectors.shape == (2, 10) and vectors.dtype == np.float32
    again = load_embedder("random:embed-tiny", LoadOptions(seed=3)).embed([ResolvedSide(texts=["a"])], dimensions=10)
    assert np.array_equal(again[0], vectors[0])  # seeded
    identity = json.loads(tiny.cache_identity())
    assert identity["weights"].startswith("random:embed-tiny|seed=3|") and identity["dtype"] == "float32"
    assert tiny.cache_identity() != load_embedder("random:embed-tiny", LoadOptions(seed=4)).cache_identity()
    with pytest.raises(ModelLoadError, match="random:embed-2b, random:embed-8b"):
        load_embedder("random:embed-3b")


def test_jobs_share_passes_and_finish_with_their_own_dimensions() -> None:
    model = load_embedder("random:embed-tiny")
    job_a = [ResolvedSide(texts=["one"]), ResolvedSide(texts=["two words"])]
    job_b = [ResolvedSide(texts=["a third, longer input of the second job"])]
    states = model.last_states([model.prepare(x) for x in job_a] + [model.prepare(x, "Find it") for x in job_b])
    assert np.allclose(model.finish(states[:2], 8), model.embed(job_a, dimensions=8), atol=1e-6)
    assert np.allclose(model.finish(states[2:]), model.embed(job_b, "Find it"), atol=1e-6)
    assert model.embed([]).shape == (0, 64) and model.embed([], dimensions=3).shape == (0, 3)
