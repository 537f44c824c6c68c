"""The seed-compatible API: ``Qwen3VLReranker(...).process(inputs)`` as in the official script.

For people coming from the official Qwen3-VL-Reranker script: the same constructor arguments and the same
``process()`` input (instruction, query, documents, fps, max_frames), returning one float per document —
but pairs are scored many per forward pass, media failures raise a clear error instead of silently scoring
a ``NULL`` prompt, and the video token budget applies to files as well as frame lists.
"""

from __future__ import annotations

from typing import Any

import torch

from media.resolver import MediaResolver
from media.sides import ResolvedSide, Side, VisionBudget
from reranker.batching import score_all
from reranker.contract import prefix_marks
from reranker.loading import LoadOptions, load_model
from rerankq.settings import DEFAULT_INSTRUCTION, Settings

_DTYPE_NAMES = {torch.bfloat16: "bfloat16", torch.float16: "float16", torch.float32: "float32"}


class Qwen3VLReranker:
    """In-process reranker. ``process({"query": {...}, "documents": [{...}, ...]})`` → list of floats.

    Accepts what the official script accepts: text, ``PIL.Image`` objects, local image/video paths (plain
    or ``file://``), ``s3://`` references (with ``s3_endpoint_url`` or the AWS defaults), and videos given
    as a file or as a list of frames (paths or images).
    """

    def __init__(
        self,
        model_name_or_path: str,
        max_length: int = 10240,
        fps: float = 1.0,
        max_frames: int = 64,
        default_instruction: str = DEFAULT_INSTRUCTION,
        torch_dtype: torch.dtype | str | None = None,
        device: str | None = None,
        batch_max_tokens: int = 32768,
        batch_max_pairs: int = 64,
        s3_endpoint_url: str | None = None,
        share_prefix: bool = True,
        **kwargs: Any,
    ) -> None:
        device = device or ("cuda" if torch.cuda.is_available() else "cpu")
        dtype = "auto" if torch_dtype is None else torch_dtype if isinstance(torch_dtype, str) else _DTYPE_NAMES.get(
            torch_dtype, str(torch_dtype).removeprefix("torch."))
        self.settings = Settings(device=device, allow_file_urls=True, s3_endpoint_url=s3_endpoint_url,
                                 instruction=default_instruction)
        self.model = load_model(model_name_or_path, LoadOptions(
            device=device, dtype=str(dtype), attn_implementation=kwargs.get("attn_implementation", "auto"),
            s3_endpoint_url=s3_endpoint_url, max_length=max_length, share_prefix=share_prefix))
        self.fps, self.max_frames = fps, max_frames
        self.default_instruction = default_instruction
        self.batch_max_tokens, self.batch_max_pairs = batch_max_tokens, batch_max_pairs
        self._resolver: MediaResolver | None = None

    @property
    def resolver(self) -> MediaResolver:
        if self._resolver is None:
            self._resolver = MediaResolver(self.settings, self.model.preprocessor)
        return self._resolver

    def process(self, inputs: dict[str, Any]) -> list[float]:
        """Score every document against the query; one float per document, in input order.

        Raises ``rerankq.errors.MediaError`` naming the reference when a query or document medium cannot be
        read (the official script would silently score a bare ``NULL`` prompt instead).
        """
        query, documents = inputs.get("query") or {}, inputs.get("documents") or []
        if not query or not documents:
            return []
        instruction = inputs.get("instruction") or self.default_instruction
        budget = VisionBudget(fps=float(inputs.get("fps") or self.fps),
                              max_frames=int(inputs.get("max_frames") or self.max_frames))
        sides = [Side.from_dict(query)] + [Side.from_dict(d) for d in documents]
        resolved = self.resolver.resolve_sides(sides, budget)
        ready: list[ResolvedSide] = []
        for item in resolved:
            if isinstance(item, Exception):
                raise item
            ready.append(item)
        pairs = []
        for pair in self.model.prepare_job(instruction, ready[0], ready[1:]):
            if isinstance(pair, Exception):
                raise pair
            pairs.append(pair)
        return score_all(self.model.forward, pairs, [p.length for p in pairs], self.batch_max_tokens,
                         self.batch_max_pairs, prefix_marks(pairs))
