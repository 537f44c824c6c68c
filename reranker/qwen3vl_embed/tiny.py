"""``rerankq tiny-model DIR --family embedding``: a tiny random-weight Qwen3-VL-Embedding checkpoint, offline.

The tiny Qwen3-VL architecture (``rerankq.models.qwen3vl.architectures`` "tiny", 64 dims), saved as the
backbone alone (``model.*`` weights, no LM head, as the official ``Qwen3VLForEmbedding`` holds it), with the
real Qwen tokenizer, the Qwen3-VL image and video processors and the chat template: the reranker's tiny
checkpoint's parts (``rerankq.models.qwen3vl.tiny``) around other weights. Vectors meaningless, code paths real.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch

from rerankq.models.qwen3vl.tiny import TINY_INIT_STD, write_tiny_model


def write_tiny_embedding_model(out_dir: str | Path, seed: int = 0) -> Path:
    """Write the tiny embedding checkpoint into ``out_dir`` and return it."""
    from transformers import Qwen3VLConfig, Qwen3VLForConditionalGeneration

    out = write_tiny_model(out_dir, seed=seed)  # tokenizer, processors, template (and weights, replaced below)
    config = Qwen3VLConfig.from_pretrained(out)
    config.text_config.initializer_range = TINY_INIT_STD  # type: ignore[union-attr]
    config.vision_config.initializer_range = TINY_INIT_STD  # type: ignore[union-attr]
    torch.manual_seed(seed + 1)  # other weights than the reranker of the same seed
    lm = Qwen3VLForConditionalGeneration._from_config(config, dtype=torch.float32)
    for stale in out.glob("model*.safetensors*"):
        stale.unlink()
    lm.save_pretrained(out)  # tied: the LM head is the embedding matrix, so only ``model.*`` is stored
    # What says "an embedding model" beside the shared architecture: sentence-transformers' modules, last-token
    # pooling and normalisation (``rerankq.models.qwen3vl_embed.serving.is_embedding_checkpoint``).
    modules = [{"idx": 0, "name": "0", "path": "", "type": "sentence_transformers.models.Transformer"},
               {"idx": 1, "name": "1", "path": "1_Pooling", "type": "sentence_transformers.models.Pooling"},
               {"idx": 2, "name": "2", "path": "2_Normalize", "type": "sentence_transformers.models.Normalize"}]
    (out / "modules.json").write_text(json.dumps(modules, indent=2))
    (out / "1_Pooling").mkdir(exist_ok=True)
    hidden = config.text_config.hidden_size  # type: ignore[union-attr]
    pooling = {"word_embedding_dimension": hidden, "pooling_mode_lasttoken": True}
    (out / "1_Pooling" / "config.json").write_text(json.dumps(pooling, indent=2))
    return out
