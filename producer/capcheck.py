"""The SDK's submit-time check of a job against what the live workers' models serve and read
(``rerankq.registry.job_refusal``): an image for a text-only model, a rerank job for an embedding model, is
refused before it is enqueued, with the model and what it reads named. The registry is read at most every
``FRESH_S`` seconds per client (one SCAN and one pipelined read per shard); no live worker for the model: no
refusal (the job may wait for one)."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

from rerankq import registry
from rerankq.errors import InvalidRequest
from rerankq.settings import Settings

FRESH_S = 1.0  # as the gateway's MODELS_FRESH_S


class ModelCheck:
    """``check(job)`` raises ``InvalidRequest`` (field ``query``, ``documents[i]`` or ``task``) for a job no live
    worker can serve. ``workers`` reads the registry (every shard's)."""

    def __init__(self, settings: Settings, workers: Callable[[], list[dict[str, Any]]]) -> None:
        self.settings, self._read = settings, workers
        self._cached: tuple[float, list[dict[str, Any]]] = (-FRESH_S - 1.0, [])

    def workers(self) -> list[dict[str, Any]]:
        at, cached = self._cached
        if time.monotonic() - at > FRESH_S:
            cached = self._read()
            self._cached = (time.monotonic(), cached)
        return cached

    def check(self, job: dict[str, Any]) -> None:
        why = registry.job_refusal(self.workers(), self.settings, job)
        if why is not None:
            raise InvalidRequest(why[1], why[0])
