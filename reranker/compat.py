"""The seed-compatible API: ``Qwen3VLReranker(...).process(inputs)`` as in the official script.

For people coming from the official Qwen3-VL-Reranker script: the same constructor arguments and the same
``process()`` input (instruction, query, documents, fps, max_frames), returning one float per document —
but pairs are scored many per forward pass, documents that cannot be scored raise one clear error listing
them all (or score ``None`` with ``errors="none"``) instead of silently scoring a ``NULL`` prompt, and the
video token budget applies to files as well as frame lists. Strings are text sides (``"query": "a cat"``).
"""

from __future__ import annotations

from typing import Any, Literal

import torch
from rerankq.media.resolver import MediaResolver
from rerankq.media.sides import Side, VisionBudget
from rerankq.models.batching import score_all
from rerankq.models.contract import prefix_marks
from rerankq.models.loading import LoadOptions, load_model

from rerankq.errors import MediaError, PermanentError
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

    def process(self, inputs: dict[str, Any], errors: Literal["raise", "none"] = "raise") -> list[Any]:
        """Score every document against the query; one float per document, in input order.

        Every document is tried. When some cannot be scored (media that cannot be read, or a pair whose vision
        tokens alone exceed ``max_length``), by default one ``DocumentsFailed`` (a ``rerankq.errors.MediaError``)
        is raised that lists each failing document's index and reason; with ``errors="none"`` those
        documents get ``None`` instead and the rest are scored, like a queued job's ``scores``. A query that
        cannot be read raises its ``MediaError`` either way (nothing can be scored). The official script
        would silently score a bare ``NULL`` prompt instead.
        """
        if errors not in ("raise", "none"):
            raise ValueError(f"errors must be 'raise' or 'none', got {errors!r}")
        query, documents = inputs.get("query") or {}, inputs.get("documents") or []
        if not query or not documents:
            return []
        pairs, failed = self._prepare(inputs, query, documents)
        if failed and errors == "raise":
            raise DocumentsFailed(failed, len(documents))
        ready = [p for p in pairs if p is not None]
        scores = iter(score_all(self.model.forward, ready, [p.length for p in ready], self.batch_max_tokens,
                                self.batch_max_pairs, prefix_marks(ready)))
        return [None if p is None else next(scores) for p in pairs]

    def _prepare(self, inputs: dict[str, Any], query: Any, documents: list[Any]) -> tuple[list[Any], dict[int, str]]:
        """Every document's pair (None where it failed) and the failures, index → reason."""
        instruction = inputs.get("instruction") or self.default_instruction
        budget = VisionBudget(fps=float(inputs.get("fps") or self.fps),
                              max_frames=int(inputs.get("max_frames") or self.max_frames))
        sides = [Side.from_dict(query)] + [Side.from_dict(d) for d in documents]
        resolved = self.resolver.resolve_sides(sides, budget)
        if isinstance(resolved[0], Exception):
            raise resolved[0]
        failed = {i: str(doc) for i, doc in enumerate(resolved[1:]) if isinstance(doc, Exception)}
        readable = [(i, doc) for i, doc in enumerate(resolved[1:]) if not isinstance(doc, Exception)]
        pairs: list[Any] = [None] * len(documents)
        prepared = self.model.prepare_job(instruction, resolved[0], [doc for _, doc in readable])
        for (i, _), pair in zip(readable, prepared, strict=True):
            if isinstance(pair, PermanentError):  # PairTooLong (a MediaError) and the like: this document's
                failed[i] = str(pair)
            elif isinstance(pair, Exception):
                raise pair  # a bug, not a document's fault
            else:
                pairs[i] = pair
        return pairs, failed


class DocumentsFailed(MediaError):
    """Documents that ``Qwen3VLReranker.process`` could not score, all of them: ``errors`` maps each one's index
    to its reason. Raised once every document has been tried."""

    def __init__(self, errors: dict[int, str], total: int) -> None:
        reasons = "; ".join(f"documents[{i}]: {errors[i]}" for i in sorted(errors))
        super().__init__("documents", f"{len(errors)} of {total} cannot be scored: {reasons}")
        self.errors = errors
