"""Qwen3-VL-Reranker architectures, every field explicit (transformers' defaults are neither model).

``2b`` and ``8b`` are the released checkpoints' shapes (their ``config.json``); ``small`` (4 text layers of hidden
512, a 2-layer vision tower) is for CPU benchmarks; ``tiny`` is the same architecture at toy size for tests:
mrope_section sums to head_dim/2, out_hidden_size equals the text hidden size, the vision position
embeddings are a square number and the deepstack indexes are below the vision depth.
"""

from __future__ import annotations

from typing import Any

from transformers import Qwen3VLConfig

VOCAB_SIZE = 151936


def _text(hidden: int, inter: int, layers: int, heads: int, kv: int, head_dim: int,
          mrope: list[int], tie: bool) -> dict[str, Any]:
    return {
        "vocab_size": VOCAB_SIZE, "hidden_size": hidden, "intermediate_size": inter,
        "num_hidden_layers": layers, "num_attention_heads": heads, "num_key_value_heads": kv,
        "head_dim": head_dim, "hidden_act": "silu", "max_position_embeddings": 262144,
        "rms_norm_eps": 1e-6, "attention_bias": False, "attention_dropout": 0.0,
        "tie_word_embeddings": tie, "pad_token_id": 151643, "bos_token_id": 151643, "eos_token_id": 151645,
        "rope_parameters": {"rope_type": "default", "rope_theta": 5_000_000.0,
                            "mrope_section": mrope, "mrope_interleaved": True},
        "dtype": "bfloat16",
    }


def _vision(depth: int, hidden: int, inter: int, heads: int, out: int, pos: int,
            deepstack: list[int]) -> dict[str, Any]:
    return {
        "depth": depth, "hidden_size": hidden, "intermediate_size": inter, "num_heads": heads,
        "in_channels": 3, "patch_size": 16, "spatial_merge_size": 2, "temporal_patch_size": 2,
        "out_hidden_size": out, "num_position_embeddings": pos, "deepstack_visual_indexes": deepstack,
        "hidden_act": "gelu_pytorch_tanh", "initializer_range": 0.02,
    }


ARCHITECTURES: dict[str, dict[str, Any]] = {
    "2b": {
        "text": _text(2048, 6144, 28, 16, 8, 128, [24, 20, 20], tie=True),
        "vision": _vision(24, 1024, 4096, 16, 2048, 2304, [5, 11, 17]),
        "tie": True,
        "name": "Qwen3-VL-Reranker-2B",
    },
    "8b": {
        "text": _text(4096, 12288, 36, 32, 8, 128, [24, 20, 20], tie=False),
        "vision": _vision(27, 1152, 4304, 16, 4096, 2304, [8, 16, 24]),
        "tie": False,
        "name": "Qwen3-VL-Reranker-8B",
    },
    # A mid-size model of the real shape (head_dim 128, mrope [24, 20, 20], patch 16 / merge 2, 2304 vision
    # position embeddings, deepstack): slow enough on a CPU for benchmark ratios to mean something.
    "small": {
        "text": _text(512, 1536, 4, 4, 2, 128, [24, 20, 20], tie=True),
        "vision": _vision(2, 256, 1024, 4, 512, 2304, [0, 1]),
        "tie": True,
        "name": "Qwen3-VL-Reranker-small",
    },
    "tiny": {
        "text": _text(64, 128, 2, 4, 2, 16, [4, 2, 2], tie=True),
        "vision": _vision(2, 32, 64, 2, 64, 16, [0]),
        "tie": True,
        "name": "Qwen3-VL-Reranker-tiny",
    },
}


def build_config(size: str) -> Qwen3VLConfig:
    """The ``Qwen3VLConfig`` of ``size`` (``2b``, ``8b``, ``small`` or ``tiny``)."""
    try:
        arch = ARCHITECTURES[size]
    except KeyError:
        raise ValueError(f"unknown architecture {size!r}; choose one of {sorted(ARCHITECTURES)}") from None
    config = Qwen3VLConfig(
        text_config=dict(arch["text"]),
        vision_config=dict(arch["vision"]),
        image_token_id=151655,
        video_token_id=151656,
        vision_start_token_id=151652,
        vision_end_token_id=151653,
        tie_word_embeddings=arch["tie"],
    )
    config.architectures = ["Qwen3VLForConditionalGeneration"]
    return config
