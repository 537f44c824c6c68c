"""Qwen3-VL-Reranker as a ``rerankq.models.contract.RerankModel``: one model instance, many pairs per forward pass.

score = sigmoid(h_last · (w_yes − w_no)), h_last the backbone's final hidden state at the last position of
a left-padded sequence. Only the backbone is kept, plus that one-row head: the vocabulary-wide LM head is
never computed (and dropped from memory after the row is taken).
"""

from __future__ import annotations

import json
import logging
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import torch

from rerankq.capabilities import ALL_MODALITIES, Capabilities
from rerankq.media.sides import ResolvedSide
from rerankq.models.batching import sharing_pays
from rerankq.models.contract import prepare_each
from rerankq.models.qwen3vl import (
    DEFAULT_INSTRUCTION,
    DEFAULT_MAX_LENGTH,
    IMAGE_MAX_TOKENS,
    IMAGE_MIN_TOKENS,
    MAX_FRAMES,
    SCORING_VERSION,
    VIDEO_MAX_TOKENS,
)
from rerankq.models.qwen3vl.pairs import JobPrefix, PreparedPair
from rerankq.models.qwen3vl.prefix import can_share, forward_suffixes
from rerankq.models.qwen3vl.preparing import PairPreparer
from rerankq.models.qwen3vl.sharing import SharingStats, attach_prefix, release, suffix_rows
from rerankq.models.qwen3vl.tokens import IMAGE_PAD_ID, VIDEO_PAD_ID
from rerankq.models.qwen3vl.vision import QwenVision, normalize

logger = logging.getLogger(__name__)

PAD_ID = 151643


@dataclass
class BatchStats:
    """What one forward pass did, for metrics."""

    pairs: int
    padded_tokens: int
    real_tokens: int
    seconds: float


def collate(pairs: Sequence[PreparedPair], device: torch.device | str = "cpu") -> dict[str, Any]:
    """Left-pad a batch and gather its vision tensors in token order.

    Text-only batches get explicit position ids (cumulative attention mask), equal to a lone pair's
    ``arange``; batches with vision get ``mm_token_type_ids`` and the model derives M-RoPE positions.
    """
    longest = max(p.length for p in pairs)
    ids = torch.full((len(pairs), longest), PAD_ID, dtype=torch.long)
    mask = torch.zeros((len(pairs), longest), dtype=torch.long)
    for row, pair in enumerate(pairs):
        ids[row, longest - pair.length:] = torch.tensor(pair.input_ids, dtype=torch.long)
        mask[row, longest - pair.length:] = 1
    batch: dict[str, Any] = {"input_ids": ids, "attention_mask": mask}
    images = [v for p in pairs for v in p.vision if v.kind == "image"]
    videos = [v for p in pairs for v in p.vision if v.kind == "video"]
    if images:
        batch["pixel_values"] = torch.cat([v.pixel_values for v in images])
        batch["image_grid_thw"] = torch.tensor([v.grid_thw for v in images], dtype=torch.long)
    if videos:
        batch["pixel_values_videos"] = torch.cat([v.pixel_values for v in videos])
        batch["video_grid_thw"] = torch.tensor([v.grid_thw for v in videos], dtype=torch.long)
    if images or videos:
        batch["mm_token_type_ids"] = (ids == IMAGE_PAD_ID).int() + 2 * (ids == VIDEO_PAD_ID).int()
    else:
        positions = (mask.cumsum(-1) - 1).clamp_(min=0)
        batch["position_ids"] = positions.unsqueeze(0).expand(3, -1, -1)
    return {k: v.to(device, non_blocking=True) for k, v in batch.items()}


def capabilities(max_length: int = DEFAULT_MAX_LENGTH) -> Capabilities:
    """Qwen3-VL-Reranker reads text, images and videos on both sides, with the official script's defaults."""
    return Capabilities(task="rerank", query=ALL_MODALITIES, documents=ALL_MODALITIES, max_length=max_length,
                        instruction=DEFAULT_INSTRUCTION, image_min_tokens=IMAGE_MIN_TOKENS,
                        image_max_tokens=IMAGE_MAX_TOKENS, video_max_tokens=VIDEO_MAX_TOKENS, max_frames=MAX_FRAMES)


class Scorer:
    """Qwen3-VL-Reranker loaded on one device: ``prepare`` pairs, ``forward`` batches of them.

    Build with ``rerankq.models.loading.load_model(spec, ...)``. Thread-compatible, not thread-safe: one caller
    runs forward passes; other threads may prepare pairs meanwhile.
    """

    def __init__(self, backbone: torch.nn.Module, head: torch.Tensor, tokenizer: Any, name: str,
                 max_length: int | None = None, share_prefix: bool = True, weights: Callable[[], str] | None = None,
                 quantization: str = "none") -> None:
        self.backbone = backbone.eval()
        self.head = head.detach().to(torch.float32)  # (hidden,) the yes − no row
        self.tokenizer = tokenizer
        self.quantization = quantization  # rerankq.models.quantization.label, or a checkpoint's own method
        self.name = name if quantization == "none" else f"{name} [{quantization}]"
        self.torch_device = head.device
        self.device = str(head.device)
        embeddings: Any = getattr(backbone, "get_input_embeddings")()  # noqa: B009 (a transformers model's)
        self.dtype = embeddings.weight.dtype  # not a linear's: those may hold quantized weights
        self.preparer = PairPreparer(tokenizer, max_length or DEFAULT_MAX_LENGTH)
        self.capabilities = capabilities(self.preparer.max_length)
        self.preprocessor = QwenVision()
        self.share = share_prefix and can_share(self.backbone)
        self.sharing = SharingStats()
        # What the weights are (checkpoint content hash, random SPEC and seed): asked for by cache_identity only.
        self._weights = weights or (lambda: f"unidentified:{uuid.uuid4()}")  # unknown weights never share scores
        self._identity: str | None = None

    def cache_identity(self) -> str:
        """Weights, dtype, quantization, attention, device type, ``SCORING_VERSION`` and ``max_length``
        (``RerankModel``). Full-precision models keep the identity they had before quantization existed."""
        if self._identity is None:
            quantized = {} if self.quantization == "none" else {"quantization": self.quantization}
            self._identity = json.dumps({**quantized,
                "implementation": "qwen3vl", "scoring_version": SCORING_VERSION, "weights": self._weights(),
                "dtype": str(self.dtype).removeprefix("torch."), "device": self.torch_device.type,
                "attn": str(getattr(getattr(self.backbone, "config", None), "_attn_implementation", "")),
                "max_length": self.preparer.max_length,
            }, sort_keys=True)
        return self._identity

    def prepare(self, instruction: str, query: ResolvedSide, document: ResolvedSide) -> PreparedPair:
        """The exact prompt, vision pads expanded, truncated as the official script does."""
        return self.preparer.prepare(instruction, query, document)

    def cap_texts(self, side: ResolvedSide, max_tokens: int) -> ResolvedSide:
        return self.preparer.cap_texts(side, max_tokens)

    def prepare_job(self, instruction: str, query: ResolvedSide,
                    documents: Sequence[ResolvedSide]) -> list[PreparedPair | Exception]:
        """Every pair of the job; with sharing on, the pairs share their common prefix when that pays."""
        pairs = prepare_each(self, instruction, query, documents)
        if self.share:
            self.share_prefix([p for p in pairs if isinstance(p, PreparedPair)])
        return pairs

    def share_prefix(self, pairs: Sequence[PreparedPair]) -> JobPrefix | None:
        """Let the pairs of *one job* share their common prefix when that pays (None: they run whole)."""
        return attach_prefix(pairs, sharing_pays) if can_share(self.backbone) else None

    @torch.inference_mode()
    def forward(self, pairs: Sequence[PreparedPair]) -> list[float]:
        """One forward pass over ``pairs`` (the caller keeps it within memory)."""
        return torch.sigmoid(self.logits(pairs)).tolist()

    @torch.inference_mode()
    def logits(self, pairs: Sequence[PreparedPair]) -> torch.Tensor:
        """``h_last · w`` of each pair (fp32, before the sigmoid), one forward pass.

        Pairs that carry a shared prefix (``prepare_job``, ``share_prefix``) run as suffixes: each prefix not
        computed yet runs once first, and is let go of after its job's last suffix."""
        if any(p.prefix is not None for p in pairs):
            rows = suffix_rows(self.backbone, pairs, self.sharing)
            last = forward_suffixes(self.backbone, rows).to(torch.float32) @ self.head
            release(pairs, self.sharing)
            return last
        batch = collate(pairs, self.torch_device)
        for key in ("pixel_values", "pixel_values_videos"):
            if key in batch:  # uint8 travelled to the device; normalise there, then the model's dtype
                batch[key] = normalize(batch[key]).to(self.dtype)
        out = self.backbone(**batch, use_cache=False)
        return out.last_hidden_state[:, -1].to(torch.float32) @ self.head
