"""Pure parts of the worker: failure isolation in a forward pass, and result assembly."""

from __future__ import annotations

import pytest

from rerankq.results import build_result, result_location
from workers.rounds import score_isolating


def test_a_failing_pair_is_isolated_and_the_rest_are_scored() -> None:
    calls: list[list[int]] = []

    def forward(items: list[int]) -> list[float]:
        calls.append(items)
        if 5 in items:
            raise RuntimeError("bad pair")
        return [i / 10 for i in items]

    out = dict(score_isolating(forward, list(range(8))))
    assert isinstance(out.pop(5), RuntimeError)
    assert out == {i: i / 10 for i in range(8) if i != 5}
    assert len(calls) < 8  # halving, not one pass per pair


def test_a_scorer_returning_the_wrong_count_is_an_error() -> None:
    with pytest.raises(RuntimeError, match="2 scores for 3 pairs"):
        score_isolating(lambda items: [0.5, 0.5], [1, 2, 3])


def test_result_is_ranked_cut_to_top_n_and_keeps_input_order_scores() -> None:
    result = build_result("j", 2, "m", [0.2, None, 0.9, 0.2, 0.5], {1: "s3://b/k: no such key"},
                          {"pairs": 4, "tokens": 100}, {"queued_s": 0.01, "media_s": 0.0, "scoring_s": 0.1})
    assert [r["index"] for r in result["results"]] == [2, 4]
    assert result["scores"] == [0.2, None, 0.9, 0.2, 0.5]
    assert result["errors"] == [{"index": 1, "error": "s3://b/k: no such key"}]
    assert result["model"] == "m" and result["usage"] == {"pairs": 4, "tokens": 100}


def test_ties_keep_input_order() -> None:
    result = build_result("j", None, "m", [0.5, 0.7, 0.5], {}, {}, {})
    assert [r["index"] for r in result["results"]] == [1, 0, 2]


def test_result_location() -> None:
    assert result_location("s3://results/rerank/", "abc") == "s3://results/rerank/abc.json"
    assert result_location("s3://results", "abc") == "s3://results/abc.json"
