"""Qwen3-VL-Embedding on one device: prepared inputs in, L2-normalised float32 vectors out.

As the official ``Qwen3VLEmbedder.process``: inputs right-padded (the processor's ``padding_side='right'``),
the Qwen3-VL backbone (``Qwen3VLModel``, no LM head), the final hidden state at each input's last non-pad
token, L2-normalised. Many inputs (of many jobs) share a forward pass, grouped under a padded-token budget.
Matryoshka ``dimensions``: the first ``dimensions`` components, L2-normalised again.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import torch

from rerankq.errors import InvalidRequest
from rerankq.media.sides import ResolvedSide
from rerankq.models.batching import plan_batches
from rerankq.models.qwen3vl.tokens import IMAGE_PAD_ID, VIDEO_PAD_ID
from rerankq.models.qwen3vl.vision import QwenVision, normalize
from rerankq.models.qwen3vl_embed import EMBEDDING_VERSION
from rerankq.models.qwen3vl_embed.preparing import MAX_LENGTH, InputPreparer, PreparedInput

PAD_ID = 151643  # <|endoftext|>, the official PAD_TOKEN


def collate(items: Sequence[PreparedInput], device: torch.device | str = "cpu") -> dict[str, Any]:
    """Right-pad a batch and gather its vision tensors in token order (uint8 pixels, normalised later)."""
    longest = max(p.length for p in items)
    ids = torch.full((len(items), longest), PAD_ID, dtype=torch.long)
    mask = torch.zeros((len(items), longest), dtype=torch.long)
    for row, item in enumerate(items):
        ids[row, :item.length] = torch.tensor(item.input_ids, dtype=torch.long)
        mask[row, :item.length] = 1
    batch: dict[str, Any] = {"input_ids": ids, "attention_mask": mask}
    for kind, values, grids in (("image", "pixel_values", "image_grid_thw"),
                                ("video", "pixel_values_videos", "video_grid_thw")):
        vision = [v for p in items for v in p.vision if v.kind == kind]
        if vision:
            batch[values] = torch.cat([v.pixel_values for v in vision])
            batch[grids] = torch.tensor([v.grid_thw for v in vision], dtype=torch.long)
    if "pixel_values" in batch or "pixel_values_videos" in batch:
        batch["mm_token_type_ids"] = (ids == IMAGE_PAD_ID).int() + 2 * (ids == VIDEO_PAD_ID).int()
    return {k: v.to(device) for k, v in batch.items()}


def matryoshka(vectors: torch.Tensor, dimensions: int | None) -> torch.Tensor:
    """The first ``dimensions`` components (all when None), L2-normalised (fp32)."""
    cut = vectors if dimensions is None else vectors[:, :dimensions]
    return torch.nn.functional.normalize(cut.to(torch.float32), p=2, dim=-1)


class Embedder:
    """Qwen3-VL-Embedding loaded on one device. Build with ``rerankq.models.qwen3vl_embed.loading``.

    ``embed`` does everything; ``prepare`` (CPU) and ``forward`` (one pass) are its halves, for callers
    that prepare the next batch while one runs. Thread-compatible, not thread-safe.
    """

    def __init__(self, backbone: torch.nn.Module, tokenizer: Any, name: str, max_length: int = MAX_LENGTH,
                 max_batch_tokens: int = 32768, max_batch_inputs: int = 64,
                 weights: Callable[[], str] | None = None) -> None:
        self.backbone = backbone.eval()
        self.tokenizer = tokenizer
        self.name = name
        embeddings: Any = getattr(backbone, "get_input_embeddings")()  # noqa: B009 (a transformers model's)
        self.dtype = embeddings.weight.dtype
        self.torch_device = embeddings.weight.device
        self.hidden_size = int(embeddings.weight.shape[1])
        self.preparer = InputPreparer(tokenizer, max_length)
        self.preprocessor = QwenVision()  # what the media resolver turns images and videos into
        self.max_batch_tokens = max_batch_tokens
        self.max_batch_inputs = max_batch_inputs
        self._weights = weights or (lambda: f"unidentified:{uuid.uuid4()}")  # unknown weights share nothing

    def cache_identity(self) -> str:
        """What a stored vector depends on besides its input: weights, dtype, device type, attention,
        ``EMBEDDING_VERSION`` and ``max_length`` (for a vector cache's keys, as the reranker's scores)."""
        attn = str(getattr(getattr(self.backbone, "config", None), "_attn_implementation", ""))
        return json.dumps({"implementation": "qwen3vl-embed", "embedding_version": EMBEDDING_VERSION,
                           "weights": self._weights(), "dtype": str(self.dtype).removeprefix("torch."),
                           "device": self.torch_device.type, "attn": attn,
                           "max_length": self.preparer.max_length}, sort_keys=True)

    def check_dimensions(self, dimensions: int | None) -> None:
        """Refuse a Matryoshka size the model cannot give (the field is named, and the limit)."""
        if dimensions is not None and not 1 <= dimensions <= self.hidden_size:
            raise InvalidRequest(f"{dimensions} is not between 1 and {self.hidden_size} (the hidden size of "
                                 f"{self.name})", field="dimensions")

    def prepare(self, item: ResolvedSide, instruction: str | None = None) -> PreparedInput:
        return self.preparer.prepare(instruction, item)

    @torch.inference_mode()
    def forward(self, items: Sequence[PreparedInput]) -> torch.Tensor:
        """One forward pass: each input's last non-pad hidden state, (len(items), hidden), fp32, not normalised."""
        batch = collate(items, self.torch_device)
        for key in ("pixel_values", "pixel_values_videos"):
            if key in batch:
                batch[key] = normalize(batch[key]).to(self.dtype)
        hidden = self.backbone(**batch, use_cache=False).last_hidden_state
        last = torch.tensor([p.length - 1 for p in items], device=hidden.device)
        return hidden[torch.arange(len(items), device=hidden.device), last].to(torch.float32)

    def last_states(self, items: Sequence[PreparedInput]) -> torch.Tensor:
        """Pooled, not normalised, (len(items), hidden) fp32 on the CPU, batched under the token budget, in
        input order: inputs of many jobs share passes, then each job takes its rows to ``finish``."""
        out = torch.zeros((len(items), self.hidden_size), dtype=torch.float32)
        for group in plan_batches([p.length for p in items], self.max_batch_tokens, self.max_batch_inputs):
            out[group] = self.forward([items[i] for i in group]).cpu()
        return out

    def finish(self, states: torch.Tensor, dimensions: int | None = None) -> np.ndarray:
        """Pooled states → float32 unit vectors of ``dimensions`` (Matryoshka; None: all) components."""
        self.check_dimensions(dimensions)
        return matryoshka(states, dimensions).numpy()

    def embed_prepared(self, items: Sequence[PreparedInput], dimensions: int | None = None) -> np.ndarray:
        """Vectors of prepared inputs (of any jobs), batched under the token budget; in input order."""
        self.check_dimensions(dimensions)
        return self.finish(self.last_states(items), dimensions)

    def embed(self, inputs: Sequence[ResolvedSide], instruction: str | None = None,
              dimensions: int | None = None) -> np.ndarray:
        """``(len(inputs), dimensions or hidden)`` float32 unit vectors of resolved inputs (texts, and vision
        inputs of ``self.preprocessor`` videos first), one instruction for all (None: the default)."""
        self.check_dimensions(dimensions)
        return self.embed_prepared([self.prepare(item, instruction) for item in inputs], dimensions)
