"""Qwen3-VL-Embedding behind the model contract (``rerankq.models.contract.RerankModel``), so that a worker's round
engine runs embedding jobs as it runs rerank jobs: an input is prepared where a pair is, and ``forward`` gives each
input's L2-normalised vector where a reranker gives a score. Loaded by ``rerankq.models.loading`` for
``random:embed-SIZE`` and for a checkpoint that is an embedding model (``is_embedding_checkpoint``).
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from rerankq.capabilities import ALL_MODALITIES, Capabilities
from rerankq.media.sides import ResolvedSide
from rerankq.models import quantization
from rerankq.models.contract import prepare_each
from rerankq.models.options import LoadOptions
from rerankq.models.qwen3vl import IMAGE_MAX_TOKENS, IMAGE_MIN_TOKENS, MAX_FRAMES, VIDEO_MAX_TOKENS
from rerankq.models.qwen3vl_embed import loading
from rerankq.models.qwen3vl_embed.model import Embedder, matryoshka
from rerankq.models.qwen3vl_embed.preparing import MAX_LENGTH, PreparedInput
from rerankq.models.qwen3vl_embed.prompt import DEFAULT_INSTRUCTION


def is_embedding_checkpoint(path: str) -> bool:
    """Whether a Qwen3-VL checkpoint (``Qwen3VLForConditionalGeneration`` in its config, as both released model
    kinds say) is Qwen3-VL-Embedding rather than the reranker: its sentence-transformers ``modules.json`` names a
    pooling module, or its name says ``Embedding`` (``Qwen/Qwen3-VL-Embedding-2B``)."""
    modules = Path(path) / "modules.json"
    if modules.exists():
        try:
            found = json.loads(modules.read_text())
        except ValueError:
            found = []
        if any("Pooling" in str(m.get("type", "")) for m in found if isinstance(m, dict)):
            return True
    return "embedding" in Path(path.rstrip("/")).name.lower()


class EmbeddingModel:
    """An ``Embedder`` as the round engine meets a model: ``capabilities.task`` is ``embed``; ``prepare_job`` takes
    no query and the inputs as documents; ``forward`` gives one unit vector (float32, every dimension) per input.
    The job's ``dimensions`` are cut at assembly (``rerankq.models.engine.matryoshka``), so the cache holds one
    vector per input whatever the sizes asked for."""

    def __init__(self, embedder: Embedder, quantization: str = "none") -> None:
        self.embedder = embedder
        self.quantization = quantization
        self.name = embedder.name if quantization == "none" else f"{embedder.name} [{quantization}]"
        self.device = str(embedder.torch_device)
        self.preprocessor = embedder.preprocessor
        self.capabilities = Capabilities(
            task="embed", query=ALL_MODALITIES, documents=ALL_MODALITIES, max_length=embedder.preparer.max_length,
            instruction=DEFAULT_INSTRUCTION, image_min_tokens=IMAGE_MIN_TOKENS, image_max_tokens=IMAGE_MAX_TOKENS,
            video_max_tokens=VIDEO_MAX_TOKENS, max_frames=MAX_FRAMES, embedding_dim=embedder.hidden_size)
        self._identity: str | None = None

    def cache_identity(self) -> str:
        if self._identity is None:
            base = json.loads(self.embedder.cache_identity())
            if self.quantization != "none":
                base["quantization"] = self.quantization
            self._identity = json.dumps(base, sort_keys=True)
        return self._identity

    def prepare(self, instruction: str, query: ResolvedSide | None, document: ResolvedSide) -> PreparedInput:
        """One input (``document``; an embedding has no query), prompt built with ``instruction``."""
        return self.embedder.prepare(document, instruction or None)

    def prepare_job(self, instruction: str, query: ResolvedSide | None,
                    documents: Sequence[ResolvedSide]) -> list[PreparedInput | Exception]:
        return prepare_each(self, instruction, query, documents)  # type: ignore[arg-type]

    def cap_texts(self, side: ResolvedSide, max_tokens: int) -> ResolvedSide:
        return side  # embedding jobs have no max_tokens_per_doc: inputs are cut at max_length, as the official

    def forward(self, items: Sequence[PreparedInput]) -> list[np.ndarray]:
        """One forward pass: each input's unit vector, all dimensions, float32, in input order."""
        return list(matryoshka(self.embedder.forward(items).cpu(), None).numpy())


def from_pretrained(path: str, name: str, opts: LoadOptions) -> EmbeddingModel:
    """A Qwen3-VL-Embedding checkpoint directory (the worker's loader's entry)."""
    embedder = loading.from_pretrained(path, opts, opts.max_length or MAX_LENGTH)
    embedder.name = name
    return _quantized(embedder, opts)


def random_weights(size: str, opts: LoadOptions) -> EmbeddingModel:
    """``random:embed-SIZE``: the released architecture with random weights."""
    return _quantized(loading.random_weights(size, opts, opts.max_length or MAX_LENGTH), opts)


def _quantized(embedder: Embedder, opts: LoadOptions) -> EmbeddingModel:
    label = quantization.quantize(embedder.backbone, opts.quantization, opts.device, opts.quantize_vision)
    return EmbeddingModel(embedder, label)
