"""A text cross-encoder as a ``rerankq.models.contract.RerankModel``: each (query, document) pair encoded whole,
``tokenizer(query, document, truncation=True, max_length=...)``, score = sigmoid of the one-logit head."""

from __future__ import annotations

import json
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from typing import Any

import torch

from rerankq.capabilities import Capabilities
from rerankq.errors import PermanentError
from rerankq.media.resolver import Preprocessor
from rerankq.media.sides import ResolvedSide
from rerankq.models.contract import prepare_each
from rerankq.models.xlmr import DEFAULT_MAX_LENGTH, SCORING_VERSION


def capabilities(max_length: int = DEFAULT_MAX_LENGTH) -> Capabilities:
    """Text on both sides, no instruction, no vision budget."""
    return Capabilities(task="rerank", max_length=max_length)


@dataclass(frozen=True)
class EncodedPair:
    """One pair's token ids (and token types, where the tokenizer gives them), ready to pad."""

    encoding: dict[str, list[int]] = field(hash=False)
    prefix: None = None  # a cross-encoder never shares a prefix

    @property
    def length(self) -> int:
        return len(self.encoding["input_ids"])


def side_text(side: ResolvedSide) -> str:
    """A side's texts, one per line (a cross-encoder reads one string per side)."""
    return "\n".join(side.texts)


class CrossEncoder:
    """A sequence-classification checkpoint with one logit, on one device. One caller runs ``forward``."""

    preprocessor: Preprocessor | None = None  # reads no image or video

    def __init__(self, model: torch.nn.Module, tokenizer: Any, name: str, max_length: int | None = None,
                 quantization: str = "none", weights: Callable[[], str] | None = None) -> None:
        self.model = model.eval()
        self.tokenizer = tokenizer
        self.quantization = quantization
        self.name = name if quantization == "none" else f"{name} [{quantization}]"
        self.max_length = max_length or DEFAULT_MAX_LENGTH
        self.capabilities = capabilities(self.max_length)
        self.torch_device = next(model.parameters()).device
        self.device = str(self.torch_device)
        embeddings: Any = getattr(model, "get_input_embeddings")()  # noqa: B009 (a transformers model's)
        self.dtype = embeddings.weight.dtype
        self._weights = weights or (lambda: f"unidentified:{uuid.uuid4()}")
        self._identity: str | None = None

    def cache_identity(self) -> str:
        if self._identity is None:
            self._identity = json.dumps({
                "implementation": "xlmr-cross-encoder", "scoring_version": SCORING_VERSION,
                "weights": self._weights(), "quantization": self.quantization,
                "dtype": str(self.dtype).removeprefix("torch."), "device": self.torch_device.type,
                "attn": str(getattr(self.model.config, "_attn_implementation", "")), "max_length": self.max_length,
            }, sort_keys=True)
        return self._identity

    def prepare(self, instruction: str, query: ResolvedSide, document: ResolvedSide) -> EncodedPair:
        """The pair as the official usage encodes it; ``instruction`` is not read (the model takes none)."""
        if query.vision or document.vision:  # the engine refuses such sides before fetching them
            raise PermanentError(f"model {self.name!r} reads text only; this pair holds images or videos")
        encoded = self.tokenizer(side_text(query), side_text(document), truncation=True, max_length=self.max_length)
        keys = [k for k in ("input_ids", "token_type_ids") if k in encoded]
        return EncodedPair({k: list(encoded[k]) for k in keys})

    def prepare_job(self, instruction: str, query: ResolvedSide,
                    documents: Sequence[ResolvedSide]) -> list[EncodedPair | Exception]:
        return prepare_each(self, instruction, query, documents)

    def cap_texts(self, side: ResolvedSide, max_tokens: int) -> ResolvedSide:
        """The side's texts cut to ``max_tokens`` tokens in all (no special tokens), at token boundaries."""
        left, texts = max_tokens, []
        for text in side.texts:
            offsets = self.tokenizer(text, add_special_tokens=False, return_offsets_mapping=True)["offset_mapping"]
            if len(offsets) > left:
                text = text[:offsets[left - 1][1]] if left else ""
            left = max(left - len(offsets), 0)
            texts.append(text)
        return replace(side, texts=texts)

    @torch.inference_mode()
    def forward(self, pairs: Sequence[EncodedPair]) -> list[float]:
        """One padded pass; one sigmoid(logit) per pair, in order."""
        batch = self.tokenizer.pad([dict(p.encoding) for p in pairs], return_tensors="pt")
        batch = {k: v.to(self.torch_device) for k, v in batch.items()}
        logits = self.model(**batch).logits.view(-1).to(torch.float32)
        return torch.sigmoid(logits).tolist()
