"""Loading a text cross-encoder checkpoint through ``AutoModelForSequenceClassification`` (one logit)."""

from __future__ import annotations

from rerankq.errors import ModelLoadError
from rerankq.models import quantization
from rerankq.models.fingerprint import checkpoint_fingerprint, local_checkpoint
from rerankq.models.options import LoadOptions, from_checkpoint
from rerankq.models.xlmr.model import CrossEncoder


def from_pretrained(path: str, name: str, opts: LoadOptions) -> CrossEncoder:
    """A checkpoint directory (or Hugging Face id) → the cross-encoder on ``opts.device``."""
    from transformers import AutoModelForSequenceClassification

    model, tokenizer = from_checkpoint(AutoModelForSequenceClassification, path, opts, "cross-encoder")
    if model.config.num_labels != 1:
        raise ModelLoadError(f"{path!r}: a cross-encoder has one relevance logit; this head has "
                             f"{model.config.num_labels} labels")
    quantized = quantization.quantize(model.base_model, opts.quantization, opts.device, False)  # head kept
    model.to(opts.device)
    return CrossEncoder(model, tokenizer, name, opts.max_length, quantization=quantized,
                        weights=lambda: checkpoint_fingerprint(local_checkpoint(path), opts.cache_dir))
