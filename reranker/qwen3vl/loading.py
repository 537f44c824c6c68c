"""Loading Qwen3-VL-Reranker: a checkpoint through ``Qwen3VLForConditionalGeneration.from_pretrained`` (tiny
test checkpoints included), or the released architecture with random weights (``random:2b|8b|small|tiny``),
built directly on the target device in the target dtype so that ``random:8b`` never materialises fp32
weights on the CPU. Only the backbone and the one-row yes − no head are kept. With ``opts.quantization`` the
backbone's linears are quantized after loading (``rerankq.models.quantization.quantize``): a checkpoint's one by
one on their way from the CPU to the device, random weights in place on the device.
"""

from __future__ import annotations

import torch

from rerankq.errors import ModelLoadError
from rerankq.models import quantization
from rerankq.models.fingerprint import checkpoint_fingerprint, local_checkpoint
from rerankq.models.options import LoadOptions, from_checkpoint, resolve_attention, resolve_dtype
from rerankq.models.qwen3vl.architectures import ARCHITECTURES, build_config
from rerankq.models.qwen3vl.model import Scorer

SIZES = tuple(ARCHITECTURES)


def _head_row(lm_head: torch.Tensor, tokenizer) -> torch.Tensor:  # type: ignore[no-untyped-def]
    vocab = tokenizer.get_vocab()
    return (lm_head[vocab["yes"]] - lm_head[vocab["no"]]).detach().clone()


def from_pretrained(path: str, name: str, opts: LoadOptions) -> Scorer:
    """A checkpoint directory (or Hugging Face id) → the scorer on ``opts.device``."""
    from transformers import Qwen3VLForConditionalGeneration

    lm, tokenizer = from_checkpoint(Qwen3VLForConditionalGeneration, path, opts, "Qwen3-VL")
    head = _head_row(lm.lm_head.weight.data, tokenizer)
    backbone, quantized = lm.model, quantization.checkpoint_label(lm.config)
    del lm  # drops the vocabulary head (untied models) — only the one row is kept
    if quantized == "none":
        quantized = quantization.quantize(backbone, opts.quantization, opts.device, opts.quantize_vision)
    elif opts.quantization != "none":
        raise ModelLoadError(f"{quantization.SETTING}={opts.quantization!r}: {path!r} is already quantized "
                             f"({quantized}); set it to none to load it as it comes")
    else:
        backbone.to(opts.device)
    return Scorer(backbone, head.to(opts.device), tokenizer, name, opts.max_length, opts.share_prefix,
                  weights=lambda: checkpoint_fingerprint(local_checkpoint(path), opts.cache_dir),
                  quantization=quantized)


def random_weights(size: str, opts: LoadOptions) -> Scorer:
    """The released architecture of ``size`` with random weights (seeded), for benchmarks and tests."""
    from transformers import Qwen3VLForConditionalGeneration

    from rerankq.models.qwen3vl.tokenizer import cached_qwen_tokenizer

    if size not in ARCHITECTURES:
        raise ModelLoadError(f"model SPEC 'random:{size}': random: takes {', '.join(ARCHITECTURES)}")
    dtype = resolve_dtype(opts.device, opts.dtype)
    config = build_config(size)
    config._attn_implementation = resolve_attention(opts.device, opts.attn_implementation)
    torch.manual_seed(opts.seed)
    with torch.device(opts.device):  # weights are created on the device, in ``dtype`` (then quantized in place)
        lm = Qwen3VLForConditionalGeneration._from_config(config, dtype=dtype)
    tokenizer = cached_qwen_tokenizer()
    head = _head_row(lm.lm_head.weight.data, tokenizer).to(opts.device)
    backbone = lm.model
    del lm
    quantized = quantization.quantize(backbone, opts.quantization, opts.device, opts.quantize_vision)
    # Random weights are a function of the seed, the device's generator and the library versions that draw them.
    import transformers

    weights = f"random:{size}|seed={opts.seed}|torch={torch.__version__}|transformers={transformers.__version__}"
    return Scorer(backbone, head, tokenizer, f"random:{size} ({ARCHITECTURES[size]['name']} architecture)",
                  opts.max_length, opts.share_prefix, weights=lambda: weights, quantization=quantized)
