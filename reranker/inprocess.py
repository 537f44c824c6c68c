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

from rerankq.errors import MediaError, PermanentError
from rerankq.media.resolver import MediaResolver
from rerankq.media.sides import Side, VisionBudget
from rerankq.models.contract import instruction_for
from rerankq.models.engine import JobInput, RoundEngine
from rerankq.models.loading import LoadOptions, load_model
from rerankq.settings import BatchSettings, Settings

_DTYPE_NAMES = {torch.bfloat16: "bfloat16", torch.float16: "float16", torch.float32: "float32"}


class Qwen3VLReranker:
    """In-process reranker, for any model rerankq serves (``Reranker`` is the same class); ``max_length`` and
    ``default_instruction`` left None are the model's own (``capabilities``).
    ``process({"query": {...}, "documents": [{...}, ...]})`` → list of floats.

    Accepts what the official script accepts: text, ``PIL.Image`` objects, local image/video paths (plain
    or ``file://``), ``s3://`` references (with ``s3_endpoint_url`` or the AWS defaults), and videos given
    as a file or as a list of frames (paths or images). ``quantization="int8"`` (or any mode of the
    ``quantization`` setting; ``load_in_8bit=True`` / ``load_in_4bit=True`` as in the official script) loads
    the weights quantized (``rerankq.models.quantization``).
    """

    def __init__(
        self,
        model_name_or_path: str,
        max_length: int | None = None,
        fps: float = 1.0,
        max_frames: int = 64,
        default_instruction: str | None = None,
        torch_dtype: torch.dtype | str | None = None,
        device: str | None = None,
        batch_max_tokens: int = 32768,
        batch_max_pairs: int = 64,
        s3_endpoint_url: str | None = None,
        share_prefix: bool = True,
        quantization: str | None = None,
        **kwargs: Any,
    ) -> None:
        device = device or ("cuda" if torch.cuda.is_available() else "cpu")
        quantization = _quantization(quantization, kwargs)
        dtype = "auto" if torch_dtype is None else torch_dtype if isinstance(torch_dtype, str) else _DTYPE_NAMES.get(
            torch_dtype, str(torch_dtype).removeprefix("torch."))
        self.settings = Settings(device=device, allow_file_urls=True, s3_endpoint_url=s3_endpoint_url)
        self.model = load_model(model_name_or_path, LoadOptions(
            device=device, dtype=str(dtype), attn_implementation=kwargs.get("attn_implementation", "auto"),
            s3_endpoint_url=s3_endpoint_url, max_length=max_length, share_prefix=share_prefix,
            quantization=quantization, quantize_vision=bool(kwargs.get("quantize_vision", False))))
        self.fps, self.max_frames = fps, max_frames
        self.default_instruction = instruction_for(self.model, default_instruction)
        self.batch_max_tokens, self.batch_max_pairs = batch_max_tokens, batch_max_pairs
        self._resolver: MediaResolver | None = None
        self._engine: RoundEngine | None = None

    @property
    def resolver(self) -> MediaResolver:
        if self._resolver is None:
            self._resolver = MediaResolver(self.settings, self.model.preprocessor)
        return self._resolver

    @property
    def engine(self) -> RoundEngine:
        """The round engine, the same one a worker runs (``rerankq.models.engine``), without a score cache."""
        if self._engine is None:
            batch = BatchSettings(max_tokens=self.batch_max_tokens, max_pairs=self.batch_max_pairs)
            self._engine = RoundEngine(self.model, self.resolver, batch, None, self.settings.media.exif_transpose)
        return self._engine

    def process(self, inputs: dict[str, Any], errors: Literal["raise", "none"] = "raise") -> list[Any]:
        """Score every document against the query; one float per document, in input order.

        Every document is tried. When some cannot be scored (media that cannot be read, or a pair whose vision
        tokens alone exceed ``max_length``), by default one ``DocumentsFailed`` (a ``rerankq.errors.MediaError``)
        is raised that lists each failing document's index and reason; with ``errors="none"`` those
        documents get ``None`` instead and the rest are scored, like a queued job's ``scores``. A query that
        cannot be read raises its ``MediaError`` either way (nothing can be scored). The official script
        would silently score a bare ``NULL`` prompt instead. ``max_tokens_per_doc`` in ``inputs`` cuts each
        document's texts first, as in a queued job.
        """
        if errors not in ("raise", "none"):
            raise ValueError(f"errors must be 'raise' or 'none', got {errors!r}")
        query, documents = inputs.get("query") or {}, inputs.get("documents") or []
        if not query or not documents:
            return []
        plan = self.engine.prepare([self._job(inputs, query, documents)])
        job = plan.jobs[0]
        if job.query_error is not None:
            raise job.query_error
        if job.errors and errors == "raise":  # before any pass: nothing is scored that would be thrown away
            raise DocumentsFailed(job.errors, len(documents))
        if job.error and not job.errors:  # the model could not prepare the job at all
            raise PermanentError(job.error)
        outcome = next(o for p in self.engine.score(plan) for o in p.finished)
        if outcome.errors and errors == "raise":  # a pair that failed in its forward pass
            raise DocumentsFailed(outcome.errors, len(documents))
        return outcome.scores

    def _job(self, inputs: dict[str, Any], query: Any, documents: list[Any]) -> JobInput:
        budget = VisionBudget(fps=float(inputs.get("fps") or self.fps),
                              max_frames=int(inputs.get("max_frames") or self.max_frames))
        return JobInput("process", Side.from_dict(query), [Side.from_dict(d) for d in documents],
                        inputs.get("instruction") or self.default_instruction, budget,
                        max_tokens_per_doc=inputs.get("max_tokens_per_doc"), use_cache=False)


def _quantization(mode: str | None, kwargs: dict[str, Any]) -> str:
    """``quantization=`` or the official script's ``load_in_8bit=True`` (bnb-8bit) / ``load_in_4bit=True``
    (bnb-nf4), the bitsandbytes modes those transformers keywords stand for; ``None`` = RERANKQ_QUANTIZATION."""
    legacy = [m for key, m in (("load_in_8bit", "bnb-8bit"), ("load_in_4bit", "bnb-nf4")) if kwargs.get(key)]
    if len(legacy) > 1 or (legacy and mode not in (None, legacy[0])):
        raise ValueError(f"quantization={mode!r}, load_in_8bit and load_in_4bit disagree: give one of them")
    if legacy:
        return legacy[0]
    return mode if mode is not None else Settings().quantization


class DocumentsFailed(MediaError):
    """Documents that ``Qwen3VLReranker.process`` could not score, all of them: ``errors`` maps each one's index
    to its reason. Raised once every document has been tried."""

    def __init__(self, errors: dict[int, str], total: int) -> None:
        errors = {i: reason.removeprefix(f"documents[{i}]: ") for i, reason in errors.items()}
        reasons = "; ".join(f"documents[{i}]: {errors[i]}" for i in sorted(errors))
        super().__init__("documents", f"{len(errors)} of {total} cannot be scored: {reasons}")
        self.errors = errors


Reranker = Qwen3VLReranker  # the same class under a family-neutral name (a cross-encoder loads through it too)
