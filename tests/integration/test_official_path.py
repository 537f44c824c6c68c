"""Our scores equal an official-style computation built from transformers' own pieces.

The official script needs qwen-vl-utils and torchvision (absent on CPU machines), so this restates its
flow with what runs here: the chat template (rendered by jinja, as ``apply_chat_template`` does), the
tokenizer, transformers' PIL image processor for pixel values, the processor's pad expansion and
``mm_token_type_ids`` rule, ``tokenizer.pad`` for padding, ``model.model(**inputs)`` letting transformers
derive positions, and a ``torch.nn.Linear`` head — one pair per forward pass, as the official script does.
"""

from __future__ import annotations

from pathlib import Path

import jinja2
import pytest
import torch
from transformers import AutoTokenizer, Qwen3VLForConditionalGeneration
from transformers.models.qwen2_vl.image_processing_pil_qwen2_vl import Qwen2VLImageProcessorPil

from rerankq.cli.samples import noise_image
from rerankq.media.sides import ResolvedSide, Side, VisionBudget
from rerankq.models.qwen3vl.preparing import PairPreparer
from rerankq.models.qwen3vl.prompt import chat_messages
from rerankq.models.qwen3vl.vision import image_input, resize_image

INSTRUCTION = "Given a search query, retrieve relevant candidates that answer the query."


@pytest.fixture(scope="module")
def official(tiny_model_dir: Path):  # type: ignore[no-untyped-def]
    lm = Qwen3VLForConditionalGeneration.from_pretrained(tiny_model_dir, dtype=torch.float32).eval()
    tokenizer = AutoTokenizer.from_pretrained(tiny_model_dir, padding_side="left")
    head = torch.nn.Linear(lm.config.text_config.hidden_size, 1, bias=False)
    with torch.no_grad():
        w = lm.lm_head.weight.data
        head.weight[0] = w[tokenizer.get_vocab()["yes"]] - w[tokenizer.get_vocab()["no"]]
    template = jinja2.Environment().from_string((tiny_model_dir / "chat_template.jinja").read_text())
    processor = Qwen2VLImageProcessorPil(patch_size=16, merge_size=2, temporal_patch_size=2,
                                         image_mean=[0.5] * 3, image_std=[0.5] * 3)
    return lm, tokenizer, head, template, processor


def official_score(official, query: Side, doc: Side) -> float:  # type: ignore[no-untyped-def]
    lm, tokenizer, head, template, processor = official
    text = template.render(messages=chat_messages(INSTRUCTION, query, doc), add_generation_prompt=True)
    images = [resize_image(i, 4, 1800) for i in [*query.images, *doc.images]]  # qwen-vl-utils' fetch_image
    extra = {}
    if images:
        vis = processor(images=images, do_resize=False, return_tensors="pt")
        for grid in vis["image_grid_thw"]:  # the processor's replace_image_token
            text = text.replace("<|image_pad|>", "<|placeholder|>" * int(grid.prod() // 4), 1)
        text = text.replace("<|placeholder|>", "<|image_pad|>")
        extra = {"pixel_values": vis["pixel_values"], "image_grid_thw": vis["image_grid_thw"]}
    inputs = tokenizer.pad({"input_ids": [tokenizer(text)["input_ids"]]}, padding=True, return_tensors="pt")
    if images:
        extra["mm_token_type_ids"] = (inputs["input_ids"] == 151655).int()
    with torch.no_grad():
        hidden = lm.model(**inputs, **extra).last_hidden_state[:, -1]
        return torch.sigmoid(head(hidden)).item()


def test_scores_equal_the_official_style_path(official, tiny_scorer) -> None:  # type: ignore[no-untyped-def]
    budget = VisionBudget()
    img_q, img_d = noise_image(150, 100, seed=5), noise_image(320, 240, seed=6)
    cases = [
        (Side(texts=["a blue nylon backpack"]), Side(texts=["Lightweight trail backpack, nylon"])),
        (Side(texts=["red shoes"]), Side(images=[img_d])),
        (Side(texts=["query"], images=[img_q]), Side(texts=["caption"], images=[img_d])),
        (Side(), Side(texts=["only a document"])),
    ]
    preparer = PairPreparer(tiny_scorer.tokenizer)
    ours, theirs = [], []
    for query, doc in cases:
        rq = ResolvedSide(texts=query.texts, vision=[image_input(i, budget) for i in query.images])
        rd = ResolvedSide(texts=doc.texts, vision=[image_input(i, budget) for i in doc.images])
        ours.append(preparer.prepare(INSTRUCTION, rq, rd))
        theirs.append(official_score(official, query, doc))
    batched = tiny_scorer.forward(ours)  # all four in one left-padded pass
    assert batched == pytest.approx(theirs, abs=1e-5)
