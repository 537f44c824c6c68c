"""rerankq's model side: prompt, vision preprocessing, media, batch planning and the scorer.

Never imports celery or redis. ``from rerankq.models import Qwen3VLReranker`` gives the seed-compatible
in-process API (the official script's ``process()``; ``Reranker``, the same class, for any model family),
loaded lazily so that importing the package is cheap.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from rerankq.models.inprocess import DocumentsFailed, Qwen3VLReranker, Reranker

__all__ = ["DocumentsFailed", "Qwen3VLReranker", "Reranker"]


def __getattr__(name: str) -> Any:
    if name in ("Qwen3VLReranker", "Reranker", "DocumentsFailed"):
        from rerankq.models import inprocess

        return getattr(inprocess, name)
    raise AttributeError(f"module 'rerankq.models' has no attribute {name!r}")
