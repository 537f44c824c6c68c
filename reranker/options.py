"""How to load a model (device, dtype, attention, caches), shared by every implementation's loader."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch

from rerankq.errors import ModelLoadError

_DTYPES = {"bfloat16": torch.bfloat16, "float16": torch.float16, "float32": torch.float32}


@dataclass(frozen=True)
class LoadOptions:
    """How to load: device, dtype ("auto" = bf16 on CUDA, fp32 on CPU), attention, caches, pair length,
    shared-prefix scoring, weight quantization (``rerankq.models.quantization``)."""

    device: str = "cpu"
    dtype: str = "auto"
    attn_implementation: str = "auto"
    cache_dir: str = "~/.cache/rerankq/models"
    s3_endpoint_url: str | None = None
    seed: int = 0
    max_length: int | None = None  # None: the model's own default (its capabilities' max_length)
    share_prefix: bool = True  # a job's pairs may run their common prefix once (exact; scoring.share_prefix)
    quantization: str = "none"  # rerankq.models.quantization.MODES
    quantize_vision: bool = False  # the vision tower's linears too


def resolve_dtype(device: str, dtype: str) -> torch.dtype:
    if dtype == "auto":
        return torch.bfloat16 if device.startswith("cuda") else torch.float32
    try:
        return _DTYPES[dtype]
    except KeyError:
        raise ModelLoadError(f"dtype {dtype!r} is not one of auto, {', '.join(_DTYPES)}") from None


def resolve_attention(device: str, attn: str) -> str:
    if attn != "auto":
        return attn
    if device.startswith("cuda"):
        try:
            import flash_attn  # noqa: F401

            return "flash_attention_2"
        except ImportError:
            pass
    return "sdpa"


def from_checkpoint(model_class: Any, path: str, opts: LoadOptions, what: str) -> tuple[Any, Any]:
    """``model_class.from_pretrained`` (dtype and attention from ``opts``) and the checkpoint's tokenizer; a
    checkpoint that cannot be read is a ``ModelLoadError`` naming ``what`` it should have been."""
    from transformers import AutoTokenizer

    try:
        model = model_class.from_pretrained(path, dtype=resolve_dtype(opts.device, opts.dtype),
                                            attn_implementation=resolve_attention(opts.device,
                                                                                  opts.attn_implementation))
        return model, AutoTokenizer.from_pretrained(path)
    except (OSError, ValueError) as exc:
        raise ModelLoadError(f"cannot load a {what} checkpoint from {path!r}: {exc}") from exc
