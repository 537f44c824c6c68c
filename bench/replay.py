"""The scorer-alone figure of ``rerankq bench``: the exact forward passes the worker ran, replayed.

The worker appends each forward pass's pairs, as (job id, document index), to ``batch.record_path``
(``BatchLog`` reads what one run added). ``Replay`` resolves the workload's media and prepares its pairs as
the worker does (same model, same ``prepare_job``, so the same shared prefixes), outside the clock, then
times only the forward passes of those batches, in the worker's order. Run between end-to-end runs, never
during one; the best of several is a ceiling for the end-to-end rate (a ratio above 1 is noise).
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from rerankq.settings import Settings

Key = tuple[int, int]  # (request index in the workload, document index)


class BatchLog:
    """The worker's record of forward passes (one JSON line each), read run by run."""

    def __init__(self, path: Path) -> None:
        self.path = path
        path.touch()

    def mark(self) -> int:
        return self.path.stat().st_size

    def batches_since(self, offset: int, job_ids: Sequence[str]) -> list[list[Key]]:
        """The passes written since ``offset`` that belong to these jobs, as keys into the workload."""
        where = {job_id: i for i, job_id in enumerate(job_ids)}
        with self.path.open() as log:
            log.seek(offset)
            lines = [json.loads(line) for line in log if line.strip()]
        batches = [[(where[j], int(d)) for j, d in line["pairs"] if j in where] for line in lines]
        return [b for b in batches if b]


class Replay:
    """A workload's pairs, prepared afresh for each replay (a shared prefix is freed after its last pair)."""

    def __init__(self, model: Any, settings: Settings, requests: Sequence[dict[str, Any]]) -> None:
        from rerankq.media.resolver import MediaResolver
        from rerankq.media.sides import Side, VisionBudget

        self.model, self.settings = model, settings
        with MediaResolver(settings, model.preprocessor) as resolver:
            self.sides = [resolver.resolve_sides([Side.from_dict(r["query"])]
                                                 + [Side.from_dict(d) for d in r["documents"]], VisionBudget())
                          for r in requests]
        self.model.forward(list(self.prepare().values())[:2])  # warm-up: lazy initialisation is not the model's

    def prepare(self) -> dict[Key, Any]:
        from rerankq.models.contract import instruction_for

        pairs: dict[Key, Any] = {}
        instruction = instruction_for(self.model, self.settings.instruction)
        for i, (query, *documents) in enumerate(self.sides):
            for k, pair in enumerate(self.model.prepare_job(instruction, query, documents)):
                if not isinstance(pair, Exception):
                    pairs[(i, k)] = pair
        return pairs

    def planned(self) -> list[list[Key]]:
        """Without a record (a remote deployment): the batches the planner would form over the whole workload."""
        from rerankq.models.batching import plan_with_prefixes
        from rerankq.models.contract import prefix_marks

        pairs = self.prepare()
        keys = list(pairs)
        values = [pairs[k] for k in keys]
        b = self.settings.batch
        plan = plan_with_prefixes([p.length for p in values], prefix_marks(values), b.max_tokens, b.max_pairs)
        return [[keys[i] for i in group] for group in plan]

    def pairs_per_s(self, batches: list[list[Key]]) -> float:
        """Pairs/s of the forward passes ``batches``, on pairs prepared before the clock starts."""
        pairs = self.prepare()
        runnable = [[pairs[k] for k in b if k in pairs] for b in batches]
        start = time.perf_counter()
        for batch in runnable:
            if batch:
                self.model.forward(batch)
        return sum(len(b) for b in runnable) / (time.perf_counter() - start)


def wait_quiet(pid: int | None, busy: float = 0.05, window: float = 0.5, timeout: float = 60.0) -> float:
    """Wait until process ``pid`` (the local worker) uses under ``busy`` of a core over ``window`` seconds:
    after its last result a worker still acknowledges messages and sends task events, and a replay must not
    share the CPU with that. Returns the seconds waited (no pid, e.g. a remote deployment: one window)."""
    start = time.monotonic()
    if pid is None:
        time.sleep(window)
        return window
    tick = os.sysconf("SC_CLK_TCK")

    def cpu() -> float:
        with open(f"/proc/{pid}/stat") as stat:
            fields = stat.read().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / tick

    while time.monotonic() - start < timeout:
        before = cpu()
        time.sleep(window)
        if (cpu() - before) / window < busy:
            break
    return time.monotonic() - start
