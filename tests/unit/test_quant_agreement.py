"""The agreement figures of the quantization bench (``bench/quantization.py``) and how ``rerankq bench``
reaches it: Spearman's rho with ties, top-k overlap, |Δ| over jobs."""

from __future__ import annotations

import pytest

from bench.quantization import agreement, spearman, top_overlap


def test_spearman_is_rank_correlation_with_tied_ranks_averaged() -> None:
    assert spearman([0.1, 0.2, 0.3, 0.4], [1.0, 2.0, 3.0, 40.0]) == pytest.approx(1.0)
    assert spearman([0.1, 0.2, 0.3, 0.4], [0.4, 0.3, 0.2, 0.1]) == pytest.approx(-1.0)
    # one swap of neighbours among 4: 1 - 6 * 2 / (4 * 15) = 0.8
    assert spearman([1, 2, 3, 4], [1, 3, 2, 4]) == pytest.approx(0.8)
    # ties share their mean rank: ranks (0.5, 0.5, 2, 3) against (0, 1, 2, 3)
    assert spearman([5, 5, 6, 7], [1, 2, 3, 4]) == pytest.approx(0.9486833, abs=1e-6)
    assert spearman([1, 1, 1], [1, 1, 1]) == 1.0


def test_top_overlap_counts_the_reference_top_k_kept() -> None:
    ref = [float(i) for i in range(12)]  # top 10: indices 2..11
    moved = ref[:]
    moved[0], moved[11] = 100.0, -1.0  # index 0 enters the top 10, index 11 leaves it
    assert top_overlap(ref, ref) == 1.0 and top_overlap(ref, moved) == 0.9
    assert top_overlap([0.3, 0.1], [0.1, 0.3], k=1) == 0.0 and top_overlap([0.3, 0.1], [0.1, 0.3]) == 1.0


def test_agreement_over_jobs() -> None:
    a = agreement([[0.1, 0.2, 0.3], [0.5, 0.6, 0.7]], [[0.1, 0.25, 0.3], [0.7, 0.6, 0.5]])
    assert a["spearman_mean"] == pytest.approx(0.0) and a["spearman_min"] == pytest.approx(-1.0)
    assert a["max_abs_delta"] == pytest.approx(0.2) and a["mean_abs_delta"] == pytest.approx(0.45 / 6)
    assert a["top10_overlap"] == 1.0  # three documents: every one is in the top 10


def test_rerankq_bench_quantization_reaches_the_quantization_bench() -> None:
    from rerankq.cli.main import build_parser

    args = build_parser().parse_args(["bench", "--quantization", "int8,bnb-nf4", "--model", "random:tiny"])
    assert args.quantization == "int8,bnb-nf4" and args.func.__module__ == "bench.throughput"
    worker = build_parser().parse_args(["worker", "--quantization", "int4"])
    assert worker.quantization == "int4"
    with pytest.raises(SystemExit):
        build_parser().parse_args(["demo", "--quantization", "int3"])
