"""``rerankq tiny-model DIR``: a tiny random-weight Qwen3-VL-Reranker checkpoint, built offline.

The real architecture at toy size (``rerankq.models.qwen3vl.architectures`` "tiny"), the *real* Qwen tokenizer (special
tokens at their real ids) and a Qwen3-VL processor with its chat template, saved with ``save_pretrained``
so it loads through exactly the same path as a released checkpoint. Deterministic for a given seed,
torch and transformers version. Its scores are meaningless; its shapes and code paths are the real ones.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch

from rerankq.models.qwen3vl.architectures import build_config
from rerankq.models.qwen3vl.prompt import CHAT_TEMPLATE
from rerankq.models.qwen3vl.tokenizer import cached_qwen_tokenizer

# Wider than the default 0.02 so that the tiny model's scores spread out (easier to tell pairs apart).
TINY_INIT_STD = 0.3


def write_tiny_model(out_dir: str | Path, seed: int = 0) -> Path:
    """Write the tiny checkpoint (model + tokenizer + processor) into ``out_dir`` and return it."""
    from transformers import Qwen3VLForConditionalGeneration
    from transformers.models.qwen2_vl.image_processing_pil_qwen2_vl import Qwen2VLImageProcessorPil
    from transformers.models.qwen3_vl.video_processing_qwen3_vl import Qwen3VLVideoProcessor

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    config = build_config("tiny")
    config.text_config.initializer_range = TINY_INIT_STD  # type: ignore[union-attr]
    config.vision_config.initializer_range = TINY_INIT_STD  # type: ignore[union-attr]
    config.dtype = "float32"
    torch.manual_seed(seed)
    model = Qwen3VLForConditionalGeneration._from_config(config, dtype=torch.float32)
    model.save_pretrained(out)
    tokenizer = cached_qwen_tokenizer()
    pixel_bounds = {"shortest_edge": 4 * 32 * 32, "longest_edge": 1800 * 32 * 32}
    image_processor = Qwen2VLImageProcessorPil(
        patch_size=16, merge_size=2, temporal_patch_size=2, image_mean=[0.5] * 3, image_std=[0.5] * 3,
        size=pixel_bounds)
    video_processor = Qwen3VLVideoProcessor(
        patch_size=16, merge_size=2, temporal_patch_size=2, image_mean=[0.5] * 3, image_std=[0.5] * 3,
        fps=1, max_frames=64)
    # Qwen3VLProcessor itself cannot be built where torchvision is missing, so its parts are saved one by
    # one, in the layout of a released checkpoint; AutoProcessor assembles them where torchvision exists.
    image_processor.save_pretrained(out)
    video_processor.save_pretrained(out)
    tokenizer.save_pretrained(out)
    (out / "chat_template.jinja").write_text(CHAT_TEMPLATE)
    (out / "processor_config.json").write_text(json.dumps({"processor_class": "Qwen3VLProcessor"}, indent=2))
    return out
