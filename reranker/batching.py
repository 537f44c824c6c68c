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
              max_tokens: int = 32768, max_pairs: int = 64,
              prefixes: Sequence[tuple[int, int] | None] | None = None) -> list[float]:
    """Score any number of pairs with ``forward``, batched under a token budget; scores in input order.
    ``prefixes`` marks pairs that run as suffixes of a shared prefix (see ``plan_with_prefixes``)."""
    scores: list[float] = [0.0] * len(pairs)
    for group in plan_with_prefixes(lengths, prefixes or [None] * len(lengths), max_tokens, max_pairs):
        for i, s in zip(group, forward([pairs[i] for i in group]), strict=True):
            scores[i] = s
    return scores


# Shared prefixes ---------------------------------------------------------------------------------------------
# A job whose pairs share a prefix runs it once; each pair then runs only its suffix, with the prefix's keys
# and values in front of its own (``reranker.prefix``). Costs, in the same unit as ``max_tokens`` (a token's
# activations in one layer of a forward pass):
# - a held prefix costs its length: its keys and values over all layers are about one token's activations
#   (8B: 36 layers x 2 x 1024 values per token, against ~53 000 activation values per token and layer);
# - a suffix row costs its padded length, plus 1/PREFIX_ROW_SHARE of the widest prefix in the pass: the
#   layer's keys and values, repeated to every head, put in front of the row (8B: 2 x 4096 values per prefix
#   token, about 1/8 of a token's activations).
PREFIX_ROW_SHARE = 8
# Sharing must save this many prefix tokens, and this share of the job's tokens: a suffix pass attends
# through a mask (the prefix in front, padding), which costs attention kernels their causal shortcut (the
# CPU's flash kernel computes the whole block instead of its triangle; CUDA's leaves flash for
# mem-efficient). A short query in front of long documents saves too little to pay for that.
MIN_SAVED_TOKENS = 64
MIN_SAVED_SHARE = 0.1


def sharing_pays(prefix_tokens: int, lengths: Sequence[int]) -> bool:
    """Whether computing a job's prefix once pays, for a job of pairs of ``lengths`` tokens: two pairs at
    least (one document: it does not), and enough prefix tokens not recomputed (see MIN_SAVED_*)."""
    saved = (len(lengths) - 1) * prefix_tokens
    return len(lengths) >= 2 and saved >= max(MIN_SAVED_TOKENS, MIN_SAVED_SHARE * sum(lengths))


def suffix_batch_tokens(prefixes: dict[int, int], rows: int, longest_suffix: int) -> int:
    """Cost of one suffix pass: its distinct held prefixes (id -> tokens), then ``rows`` padded suffixes
    with the widest prefix in front of each."""
    widest = max(prefixes.values(), default=0)
    return sum(prefixes.values()) + rows * longest_suffix + -(-rows * widest // PREFIX_ROW_SHARE)


def plan_shared_batches(suffix_lengths: Sequence[int], prefix_ids: Sequence[int], prefix_tokens: Sequence[int],
                        max_tokens: int, max_pairs: int) -> list[list[int]]:
    """Group suffixes into passes with ``suffix_batch_tokens <= max_tokens`` and ``<= max_pairs`` rows.

    Suffix ``i`` continues prefix ``prefix_ids[i]`` of ``prefix_tokens[i]`` tokens. Suffixes of one prefix
    stay together, longest first, so a prefix is held for as few passes as possible: from its first pass to
    its last, then freed. A pass of one suffix runs whatever its cost (the caller allows it or not).
    """
    if max_tokens < 1 or max_pairs < 1:
        raise ValueError(f"max_tokens and max_pairs must be positive, got {max_tokens} and {max_pairs}")
    order = sorted(range(len(suffix_lengths)), key=lambda i: (prefix_ids[i], -suffix_lengths[i]))
    batches: list[list[int]] = []
    current: list[int] = []
    held: dict[int, int] = {}
    longest = 0
    for i in order:
        grown = {**held, prefix_ids[i]: prefix_tokens[i]}
        cost = suffix_batch_tokens(grown, len(current) + 1, max(longest, suffix_lengths[i]))
        if current and (len(current) + 1 > max_pairs or cost > max_tokens):
            batches.append(current)
            current, held, longest = [], {}, 0
            grown = {prefix_ids[i]: prefix_tokens[i]}
        current.append(i)
        held, longest = grown, max(longest, suffix_lengths[i])
    if current:
        batches.append(current)
    return batches


def plan_with_prefixes(lengths: Sequence[int], prefixes: Sequence[tuple[int, int] | None], max_tokens: int,
                       max_pairs: int) -> list[list[int]]:
    """Plan pairs of which some run as suffixes: ``prefixes[i]`` is (prefix id, prefix tokens) for a pair
    that continues a shared prefix (its suffix is ``lengths[i]`` minus the prefix), None for a pair that
    runs whole. Without any prefix this is ``plan_batches``; otherwise a whole pair is a suffix of nothing
    and rides in the same passes (one pass can hold the suffixes of several jobs and whole pairs)."""
    if all(p is None for p in prefixes):
        return plan_batches(lengths, max_tokens, max_pairs)
    ids = [-1 if p is None else p[0] for p in prefixes]
    tokens = [0 if p is None else p[1] for p in prefixes]
    return plan_shared_batches([n - t for n, t in zip(lengths, tokens, strict=True)], ids, tokens, max_tokens,
                               max_pairs)
