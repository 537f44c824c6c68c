"""The scorer: one model instance, many prepared pairs per forward pass.

score = sigmoid(h_last · (w_yes − w_no)), h_last the backbone's final hidden state at the last position of
a left-padded sequence. Only the backbone is kept, plus that one-row head: the vocabulary-wide LM head is
never computed (and dropped from memory after the row is taken).
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch

from reranker.batching import plan_with_prefixes, sharing_pays
from reranker.pipeline import IMAGE_PAD_ID, VIDEO_PAD_ID, PreparedPair
from reranker.prefix import can_share, forward_suffixes
from reranker.sharing import JobPrefix, SharingStats, attach_prefix, plan_marks, release, suffix_rows
from reranker.vision import normalize

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


class Scorer:
    """A loaded reranker: ``score(pairs)`` returns one relevance score per pair, in input order.

    Build with ``reranker.loading.load_scorer(spec, ...)``. Thread-compatible, not thread-safe: one caller
    runs forward passes; other threads may prepare pairs meanwhile.
    """

    def __init__(self, backbone: torch.nn.Module, head: torch.Tensor, tokenizer: Any, name: str) -> None:
        self.backbone = backbone.eval()
        self.head = head.detach().to(torch.float32)  # (hidden,) the yes − no row
        self.tokenizer = tokenizer
        self.name = name
        self.device = head.device
        self.dtype = next(backbone.parameters()).dtype
        self.sharing = SharingStats()
        self._can_share: bool | None = None

    @torch.inference_mode()
    def forward(self, pairs: Sequence[PreparedPair]) -> list[float]:
        """One forward pass over ``pairs`` (the caller keeps it within memory)."""
        return torch.sigmoid(self.logits(pairs)).tolist()

    @torch.inference_mode()
    def logits(self, pairs: Sequence[PreparedPair]) -> torch.Tensor:
        """``h_last · w`` of each pair (fp32, before the sigmoid), one forward pass.

        Pairs that carry a shared prefix (``share_prefix``) run as suffixes: each prefix not computed yet runs
        once first, and is let go of after its job's last suffix."""
        if any(p.prefix is not None for p in pairs):
            rows = suffix_rows(self.backbone, pairs, self.sharing)
            last = forward_suffixes(self.backbone, rows).to(torch.float32) @ self.head
            release(pairs, self.sharing)
            return last
        batch = collate(pairs, self.device)
        for key in ("pixel_values", "pixel_values_videos"):
            if key in batch:  # uint8 travelled to the device; normalise there, then the model's dtype
                batch[key] = normalize(batch[key]).to(self.dtype)
        out = self.backbone(**batch, use_cache=False)
        return out.last_hidden_state[:, -1].to(torch.float32) @ self.head

    def share_prefix(self, pairs: Sequence[PreparedPair]) -> JobPrefix | None:
        """Let the pairs of *one job* share their common prefix when that pays (None: they run whole)."""
        if self._can_share is None:
            self._can_share = can_share(self.backbone)
        return attach_prefix(pairs, sharing_pays) if self._can_share else None

    def score(self, pairs: Sequence[PreparedPair], max_tokens: int = 32768, max_pairs: int = 64) -> list[float]:
        """Score any number of pairs, batched under a token budget; scores in input order."""
        scores: list[float] = [0.0] * len(pairs)
        for group in plan_with_prefixes([p.length for p in pairs], plan_marks(pairs), max_tokens, max_pairs):
            for i, s in zip(group, self.forward([pairs[i] for i in group]), strict=True):
                scores[i] = s
        return scores
