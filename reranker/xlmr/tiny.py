"""``rerankq tiny-model --family xlmr-reranker DIR``: a tiny random-weight bge-reranker-style checkpoint, offline.

``XLMRobertaForSequenceClassification`` at toy size (one logit) and a small Unigram tokenizer trained here on a
fixed corpus, with XLM-R's special tokens at XLM-R's ids and its pair template (``<s> A </s></s> B </s>``),
saved as an ``XLMRobertaTokenizerFast``. It loads through exactly the path a released checkpoint takes
(``config.json`` architectures → ``rerankq.models.xlmr.loading``). Its scores are meaningless; its code
paths are the real ones.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

SPECIALS = ["<s>", "<pad>", "</s>", "<unk>"]  # XLM-R's ids 0..3; <mask> goes last
CORPUS = [
    "a cat sits on the mat", "the quick brown fox jumps over the lazy dog", "rerank documents by relevance",
    "what is the capital of france", "paris is the capital of france", "berlin is the capital of germany",
    "photos of dogs and cats", "a red car parked outside", "machine learning models score pairs",
    "the weather today is sunny with light wind", "queues, workers and batches of jobs",
    "Zwölf Boxkämpfer jagen Viktor quer über den großen Sylter Deich", "le chat est sur le tapis",
    "0123456789 .,;:!?'\"()[]{}-_/+*=<>@#%&", "ABCDEFGHIJKLMNOPQRSTUVWXYZ abcdefghijklmnopqrstuvwxyz",
]
TINY = {"hidden_size": 32, "num_hidden_layers": 2, "num_attention_heads": 4, "intermediate_size": 64,
        "max_position_embeddings": 514 + 2, "type_vocab_size": 1}
TINY_INIT_STD = 0.3  # wider than 0.02, so that the tiny model's scores spread out


def build_tokenizer(vocab_size: int = 300) -> object:
    """The Unigram tokenizer, as an ``XLMRobertaTokenizerFast`` (no download, no sentencepiece model file)."""
    from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers, processors, trainers
    from transformers import XLMRobertaTokenizerFast  # type: ignore[attr-defined]

    tok = Tokenizer(models.Unigram())
    tok.normalizer = normalizers.NFKC()
    tok.pre_tokenizer = pre_tokenizers.Metaspace()
    tok.decoder = decoders.Metaspace()
    trainer = trainers.UnigramTrainer(vocab_size=vocab_size, special_tokens=SPECIALS, unk_token="<unk>")
    tok.train_from_iterator(CORPUS * 4, trainer)
    tok.add_special_tokens(["<mask>"])
    cls, sep = tok.token_to_id("<s>"), tok.token_to_id("</s>")
    tok.post_processor = processors.TemplateProcessing(
        single="<s> $A </s>", pair="<s> $A </s> </s> $B </s>", special_tokens=[("<s>", cls), ("</s>", sep)])
    return XLMRobertaTokenizerFast(tokenizer_object=tok, bos_token="<s>", eos_token="</s>", sep_token="</s>",
                                   cls_token="<s>", unk_token="<unk>", pad_token="<pad>", mask_token="<mask>",
                                   model_max_length=512)


def write_tiny_model(out_dir: str | Path, seed: int = 0) -> Path:
    """Write the tiny cross-encoder checkpoint (model + tokenizer) into ``out_dir`` and return it."""
    from transformers import XLMRobertaConfig, XLMRobertaForSequenceClassification

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    tokenizer = build_tokenizer()
    shape: dict[str, Any] = dict(TINY)
    config = XLMRobertaConfig(vocab_size=len(tokenizer), pad_token_id=1, bos_token_id=0,  # type: ignore[arg-type]
                              eos_token_id=2, initializer_range=TINY_INIT_STD, **shape)
    config.num_labels = 1
    torch.manual_seed(seed)
    model = XLMRobertaForSequenceClassification(config).eval()
    model.save_pretrained(out)
    tokenizer.save_pretrained(out)  # type: ignore[attr-defined]
    return out
