"""The batch planner: pair lengths in, groups of pair indices out. Pure; no tensors, no I/O.

Batches are capped by *padded* tokens (pairs x longest pair), because that is what a left-padded forward
pass costs in memory and time, and by a pair count. Pairs are sorted by length first so that pairs of
similar length share a batch and little is spent on padding.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import TypeVar

T = TypeVar("T")


def plan_batches(lengths: Sequence[int], max_tokens: int, max_pairs: int) -> list[list[int]]:
    """Group indices of ``lengths`` into batches with ``len(batch) * max(lengths[batch]) <= max_tokens``.

    Every index appears in exactly one batch. A pair longer than ``max_tokens`` gets a batch of its own
    (it has to run somewhere; the caller decides whether it is allowed). Batches come longest first, so a
    memory problem shows on the first pass rather than the last.
    """
    if max_tokens < 1 or max_pairs < 1:
        raise ValueError(f"max_tokens and max_pairs must be positive, got {max_tokens} and {max_pairs}")
    order = sorted(range(len(lengths)), key=lambda i: lengths[i], reverse=True)
    batches: list[list[int]] = []
    current: list[int] = []
    longest = 0
    for i in order:
        # Sorted descending: the first pair of a batch is its longest, so the padded size is fixed by it.
        longest = longest or lengths[i]
        if current and (len(current) + 1 > max_pairs or (len(current) + 1) * longest > max_tokens):
            batches.append(current)
            current, longest = [], lengths[i]
        current.append(i)
    if current:
        batches.append(current)
    return batches


def padding_ratio(lengths: Sequence[int], batches: Sequence[Sequence[int]]) -> float:
    """Share of the padded token grid that is padding (0 = none)."""
    total = sum(len(b) * max(lengths[i] for i in b) for b in batches if b)
    real = sum(lengths[i] for b in batches for i in b)
    return 0.0 if total == 0 else 1 - real / total


def score_all(forward: Callable[[list[T]], list[float]], pairs: Sequence[T], lengths: Sequence[int],
              max_tokens: int = 32768, max_pairs: int = 64) -> list[float]:
    """Score any number of pairs with ``forward``, batched under a padded-token budget; scores in input order."""
    scores: list[float] = [0.0] * len(pairs)
    for group in plan_batches(lengths, max_tokens, max_pairs):
        for i, s in zip(group, forward([pairs[i] for i in group]), strict=True):
            scores[i] = s
    return scores
