"""The batch planner: every pair once, under the padded-token budget, longest first."""

from __future__ import annotations

import random

import pytest

from rerankq.models.batching import (
    padding_ratio,
    plan_batches,
    plan_shared_batches,
    plan_with_prefixes,
    sharing_pays,
    suffix_batch_tokens,
)


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


# Shared prefixes -----------------------------------------------------------------------------------------
def test_sharing_pays_from_two_pairs_and_enough_saved_tokens() -> None:
    assert not sharing_pays(5000, [5100])  # one document: nothing to share
    assert not sharing_pays(20, [40, 40])  # 20 tokens saved: not worth a pass of its own
    assert sharing_pays(60, [100, 100, 100]) and sharing_pays(1000, [1200, 1100])
    # a 55-token query before eight ~950-token image documents saves 5 % of the job: declined
    assert not sharing_pays(55, [970] * 8)
    assert sharing_pays(160, [263] * 16) and sharing_pays(1100, [1190] * 16)


def check_shared(suffixes: list[int], prefix_ids: list[int], prefix_tokens: list[int], max_tokens: int,
                 max_pairs: int) -> list[list[int]]:
    batches = plan_shared_batches(suffixes, prefix_ids, prefix_tokens, max_tokens, max_pairs)
    assert sorted(i for b in batches for i in b) == list(range(len(suffixes)))
    for b in batches:
        held = {prefix_ids[i]: prefix_tokens[i] for i in b}
        cost = suffix_batch_tokens(held, len(b), max(suffixes[i] for i in b))
        assert len(b) <= max_pairs and (len(b) == 1 or cost <= max_tokens)
    # a prefix is held from its first pass to its last: its suffixes' passes are consecutive
    for prefix in set(prefix_ids):
        passes = [k for k, b in enumerate(batches) if any(prefix_ids[i] == prefix for i in b)]
        assert passes == list(range(passes[0], passes[-1] + 1))
    return batches


def test_random_shared_plans_respect_the_budget() -> None:
    rng = random.Random(11)
    for _ in range(300):
        jobs = rng.randint(1, 8)
        tokens = [rng.randint(1, 4000) for _ in range(jobs)]
        ids = [rng.randrange(jobs) for _ in range(rng.randint(1, 100))]
        check_shared([rng.randint(1, 600) for _ in ids], ids, [tokens[j] for j in ids],
                     rng.randint(1, 30000), rng.randint(1, 64))


def test_a_held_prefix_counts_against_the_budget() -> None:
    # 8 suffixes of 100 tokens are 800 tokens; their 4000-token prefix held, plus 8 x 4000 / 8 for the
    # prefix in front of each row, make 8800: one pass under 10 000, two under 7000.
    assert suffix_batch_tokens({0: 4000}, 8, 100) == 4000 + 800 + 4000
    assert len(check_shared([100] * 8, [0] * 8, [4000] * 8, 10_000, 64)) == 1
    assert len(check_shared([100] * 8, [0] * 8, [4000] * 8, 7_000, 64)) == 2
    assert suffix_batch_tokens({0: 1000, 1: 3000}, 4, 50) == 4000 + 200 + 1500


def test_several_jobs_share_a_suffix_pass() -> None:
    batches = check_shared([80, 90, 100, 70], [0, 0, 1, 1], [500, 500, 300, 300], 100_000, 64)
    assert batches == [[1, 0, 2, 3]]


def test_whole_pairs_ride_with_suffixes() -> None:
    lengths = [600, 650, 700, 120, 130]
    marks: list[tuple[int, int] | None] = [(0, 500), (0, 500), (0, 500), None, None]
    assert plan_with_prefixes(lengths, marks, 100_000, 64) == [[4, 3, 2, 1, 0]]  # one pass
    two = plan_with_prefixes(lengths, marks, 1000, 64)  # 500 held + 5 x 200 + 5 x 500 / 8: over 1000
    assert sorted(i for b in two for i in b) == list(range(5)) and len(two) > 1
    assert plan_with_prefixes(lengths, [None] * 5, 1000, 64) == plan_batches(lengths, 1000, 64)
