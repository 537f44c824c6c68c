"""Sharing a job's prefix: where its pairs stop being the same, the handle its pairs carry, and the
bookkeeping around the passes of ``rerankq.models.qwen3vl.prefix`` (which prefix to compute, when to free
it, what it saved).

The boundary is the longest common prefix of the job's pairs' *token ids* (after vision expansion and
truncation), never a string boundary (Qwen's pre-tokenizer joins punctuation with the letters after it, so
``<Document>:`` followed by text need not split where the strings do). It moves back so that it never cuts
a vision input and never takes in one that is not the same in every pair: ids alone cannot tell two
images of one size apart.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch

from rerankq.models.qwen3vl.pairs import JobPrefix, PreparedPair
from rerankq.models.qwen3vl.prefix import EMPTY, SuffixRow, encode_prefixes
from rerankq.models.qwen3vl.tokens import IMAGE_PAD_ID, VIDEO_PAD_ID
from rerankq.models.qwen3vl.vision import VisionInput

_PADS = (IMAGE_PAD_ID, VIDEO_PAD_ID)


@dataclass(frozen=True)
class Split:
    """Where a job's pairs stop being the same: ``length`` prefix tokens holding the first ``items`` vision
    inputs of every pair."""

    length: int
    items: int


def vision_spans(ids: Sequence[int], vision: Sequence[VisionInput]) -> list[tuple[int, int]]:
    """``[start, end)`` of each vision input's pad tokens in ``ids`` (a video: all its temporal groups)."""
    runs: list[tuple[int, int]] = []
    i, n = 0, len(ids)
    while i < n:
        if ids[i] in _PADS:
            j = i
            while j < n and ids[j] == ids[i]:
                j += 1
            runs.append((i, j))
            i = j
        else:
            i += 1
    spans, k = [], 0
    for item in vision:
        groups = item.grid_thw[0] if item.kind == "video" else 1
        spans.append((runs[k][0], runs[k + groups - 1][1]))
        k += groups
    return spans


def _common_length(a: list[int], b: list[int], limit: int) -> int:
    """Length of the longest common prefix of ``a`` and ``b``, at most ``limit`` (binary search on slices)."""
    lo, hi = 0, min(limit, len(a), len(b))
    if a[:hi] == b[:hi]:
        return hi
    while lo < hi - 1:  # a[:lo] == b[:lo] and a[:hi] != b[:hi]
        mid = (lo + hi) // 2
        if a[:mid] == b[:mid]:
            lo = mid
        else:
            hi = mid
    return lo


def same_vision(a: VisionInput, b: VisionInput) -> bool:
    """The same pixels, grid and timestamps (the query's inputs are one object shared by the job's pairs)."""
    return a is b or (a.kind == b.kind and a.grid_thw == b.grid_thw and a.timestamps == b.timestamps
                      and torch.equal(a.pixel_values, b.pixel_values))


def shared_prefix(pairs: Sequence[PreparedPair]) -> Split:
    """The longest prefix of token ids common to ``pairs`` that is safe to compute once (see module doc).

    Every pair keeps at least its last token as suffix, so each pair has a last position of its own.
    """
    first = pairs[0]
    length = min(p.length for p in pairs) - 1
    for pair in pairs[1:]:
        length = _common_length(first.input_ids, pair.input_ids, length)
    items = 0
    for k, (start, end) in enumerate(vision_spans(first.input_ids, first.vision)):
        if start >= length:
            break
        if end > length or not all(same_vision(first.vision[k], p.vision[k]) for p in pairs[1:]):
            length = start
            break
        items = k + 1
    return Split(max(length, 0), items)


def attach_prefix(pairs: Sequence[PreparedPair], pays: Callable[[int, list[int]], bool]) -> JobPrefix | None:
    """Give the pairs of one job their shared prefix when ``pays(prefix_tokens, pair_lengths)`` says it is
    worth it (``rerankq.models.batching.sharing_pays``); returns the handle, or None (the pairs then run whole)."""
    if len(pairs) < 2:
        return None
    split = shared_prefix(pairs)
    if split.length < 1 or not pays(split.length, [p.length for p in pairs]):
        return None
    first = pairs[0]
    handle = JobPrefix(first.input_ids[:split.length], first.vision[:split.items], pending=len(pairs))
    for pair in pairs:
        pair.prefix = handle
    return handle


@dataclass
class SharingStats:
    """Cumulative counters of one scorer (read by the worker's metrics at scrape time)."""

    prefix_passes: int = 0  # forward passes over prefixes (all the prefixes a suffix pass needs, together)
    prefixes_computed: int = 0  # one per job that shares: its prefix is computed once
    prefix_tokens_computed: int = 0
    prefix_tokens_saved: int = 0  # prefix tokens the suffixes did not recompute: (pairs - 1) x prefix


def suffix_rows(backbone: object, pairs: Sequence[PreparedPair], stats: SharingStats) -> list[SuffixRow]:
    """Rows of a suffix pass for ``pairs``; the prefixes not computed yet run first, together in one pass
    (a pair without a prefix is a suffix of nothing)."""
    missing = list({id(p.prefix): p.prefix for p in pairs if p.prefix is not None and p.prefix.kv is None}.values())
    if missing:
        for computed, kv in zip(missing, encode_prefixes(backbone, [(h.ids, h.vision) for h in missing]),
                                strict=True):
            computed.kv = kv
        stats.prefix_passes += 1
        stats.prefixes_computed += len(missing)
        stats.prefix_tokens_computed += sum(h.length for h in missing)
    rows = []
    for pair in pairs:
        handle = pair.prefix
        if handle is None or handle.kv is None:
            rows.append(SuffixRow(EMPTY, pair.input_ids, pair.vision))
        else:
            rows.append(SuffixRow(handle.kv, pair.input_ids[handle.length:], pair.vision[len(handle.vision):]))
    return rows


def release(pairs: Sequence[PreparedPair], stats: SharingStats) -> None:
    """Count ``pairs`` as scored; a prefix whose last suffix this was lets go of its keys and values."""
    for pair in pairs:
        handle = pair.prefix
        if handle is None:
            continue
        if handle.served:
            stats.prefix_tokens_saved += handle.length
        handle.served += 1
        handle.pending -= 1
        if handle.pending <= 0:
            handle.kv = None

