"""Loading Qwen3-VL-Embedding: a checkpoint directory through ``Qwen3VLModel.from_pretrained`` (the backbone the
official ``Qwen3VLForEmbedding`` wraps as ``model``; tiny test checkpoints included), or the released
architectures with random weights (``random:embed-2b`` 2048 dims, ``random:embed-8b`` 4096, also
``embed-small`` and ``embed-tiny``), built on the target device in the target dtype, for benchmarks.
"""

from __future__ import annotations

import torch

from rerankq.errors import ModelLoadError
from rerankq.models.fingerprint import checkpoint_fingerprint, local_checkpoint
from rerankq.models.options import LoadOptions, resolve_attention, resolve_dtype
from rerankq.models.qwen3vl.architectures import ARCHITECTURES, build_config
from rerankq.models.qwen3vl_embed.model import Embedder
from rerankq.models.qwen3vl_embed.preparing import MAX_LENGTH

RANDOM_PREFIX = "random:embed-"
SIZES = tuple(ARCHITECTURES)  # Qwen3-VL-Embedding-2B/8B share Qwen3-VL-2B/8B's shapes with the rerankers
NAMES = {"2b": "Qwen3-VL-Embedding-2B", "8b": "Qwen3-VL-Embedding-8B", "small": "Qwen3-VL-Embedding-small",
         "tiny": "Qwen3-VL-Embedding-tiny"}


def from_pretrained(path: str, opts: LoadOptions, max_length: int = MAX_LENGTH) -> Embedder:
    """A checkpoint directory → the embedder on ``opts.device``."""
    from transformers import AutoTokenizer, Qwen3VLModel

    dtype = resolve_dtype(opts.device, opts.dtype)
    try:
        backbone: torch.nn.Module = Qwen3VLModel.from_pretrained(
            path, dtype=dtype, attn_implementation=resolve_attention(opts.device, opts.attn_implementation))
        tokenizer = AutoTokenizer.from_pretrained(path)
    except (OSError, ValueError) as exc:
        raise ModelLoadError(f"cannot load a Qwen3-VL-Embedding checkpoint from {path!r}: {exc}") from exc
    return Embedder(backbone.to(opts.device), tokenizer, path, max_length,
                    weights=lambda: checkpoint_fingerprint(local_checkpoint(path), opts.cache_dir))


def random_weights(size: str, opts: LoadOptions, max_length: int = MAX_LENGTH) -> Embedder:
    """The architecture of ``size`` with random weights (seeded by ``opts.seed``)."""
    from transformers import Qwen3VLModel

    from rerankq.models.qwen3vl.tokenizer import cached_qwen_tokenizer

    if size not in SIZES:
        raise ModelLoadError(f"model SPEC '{RANDOM_PREFIX}{size}': takes {', '.join(RANDOM_PREFIX + s for s in SIZES)}")
    config = build_config(size)
    config._attn_implementation = resolve_attention(opts.device, opts.attn_implementation)
    torch.manual_seed(opts.seed)
    with torch.device(opts.device):
        backbone = Qwen3VLModel._from_config(config, dtype=resolve_dtype(opts.device, opts.dtype))
    import transformers

    weights = (f"{RANDOM_PREFIX}{size}|seed={opts.seed}|torch={torch.__version__}"
               f"|transformers={transformers.__version__}")
    return Embedder(backbone, cached_qwen_tokenizer(), f"{RANDOM_PREFIX}{size} ({NAMES[size]} architecture)",
                    max_length, weights=lambda: weights)


def load_embedder(spec: str, opts: LoadOptions | None = None, max_length: int = MAX_LENGTH) -> Embedder:
    """``random:embed-SIZE`` or a local checkpoint directory."""
    opts = opts or LoadOptions()
    if spec.startswith(RANDOM_PREFIX):
        return random_weights(spec.removeprefix(RANDOM_PREFIX), opts, max_length)
    return from_pretrained(spec, opts, max_length)
