"""The batch planner: every pair once, under the padded-token budget, longest first."""

from __future__ import annotations

import random

import pytest

from reranker.batching import padding_ratio, plan_batches


def check(lengths: list[int], max_tokens: int, max_pairs: int) -> list[list[int]]:
    batches = plan_batches(lengths, max_tokens, max_pairs)
    assert sorted(i for b in batches for i in b) == list(range(len(lengths)))
    for b in batches:
        assert len(b) <= max_pairs
        assert len(b) == 1 or len(b) * max(lengths[i] for i in b) <= max_tokens
    return batches


def test_random_plans_respect_the_budget() -> None:
    rng = random.Random(7)
    for _ in range(300):
        lengths = [rng.randint(1, 3000) for _ in range(rng.randint(0, 120))]
        check(lengths, rng.randint(1, 20000), rng.randint(1, 64))


def test_similar_lengths_share_batches() -> None:
    lengths = [100, 1000, 110, 990, 105, 1010]
    batches = check(lengths, 3100, 8)
    assert [sorted(b) for b in batches] == [[1, 3, 5], [0, 2, 4]]


def test_pair_cap() -> None:
    assert [len(b) for b in check([10] * 10, 10_000, 4)] == [4, 4, 2]


def test_oversized_pair_runs_alone() -> None:
    assert check([50, 5000, 40], 1000, 8) == [[1], [0, 2]]


def test_padding_ratio() -> None:
    assert padding_ratio([10, 10], [[0, 1]]) == 0.0
    assert padding_ratio([10, 30], [[0, 1]]) == pytest.approx(1 - 40 / 60)


def test_rejects_non_positive_budget() -> None:
    with pytest.raises(ValueError, match="max_tokens"):
        plan_batches([1], 0, 1)
