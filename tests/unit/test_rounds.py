"""Pure parts of the worker: failure isolation in a forward pass, and result assembly."""

from __future__ import annotations

from typing import Any

import pytest
from rerankq.worker.rounds import score_isolating

from rerankq.results import build_result, result_location


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


def _run(documents: int) -> Any:
    from concurrent.futures import Future

    from rerankq.worker.rounds import JobRun

    from rerankq.schema import parse_job

    return JobRun(parse_job({"job_id": "j", "query": "q", "documents": [f"d{i}" for i in range(documents)]}),
                  Future())


def test_documents_from_the_score_cache_get_their_score_and_no_pair() -> None:
    from rerankq.media.sides import ResolvedSide
    from rerankq.models.fake import load_fake
    from rerankq.models.options import LoadOptions
    from rerankq.worker.rounds import prepare_units

    from rerankq.errors import MediaError

    model = load_fake("fake:hash", LoadOptions())
    run = _run(4)
    run.cached, run.keys = {1: 0.75}, {0: "k0", 1: "k1"}
    sides = [ResolvedSide(texts=["q"]), ResolvedSide(texts=["d0"]), None, MediaError("s3://b/k", "no such key"),
             ResolvedSide(texts=["d3"])]
    units = prepare_units(run, sides, model, "inst")
    assert [(u.index, u.key) for u in units] == [(0, "k0"), (3, None)] and run.pending == 2
    assert run.scores == [None, 0.75, None, None] and list(run.errors) == [2] and run.error is None

    everything = _run(3)
    everything.cached = {0: 0.1, 1: 0.3, 2: 0.2}
    assert prepare_units(everything, [None] * 4, model, "inst") == [] and everything.error is None
    result = everything.result("m")
    assert [r["index"] for r in result["results"]] == [1, 2, 0]  # ranked from scores, however they came
    assert result["usage"] == {"pairs": 3, "tokens": 0, "cached_pairs": 3, "cached_indices": [0, 1, 2]}

    rest_failed = _run(2)
    rest_failed.cached = {0: 0.5}
    prepare_units(rest_failed, [ResolvedSide(texts=["q"]), None, MediaError("s3://b/k", "gone")], model, "i")
    assert rest_failed.error is None and rest_failed.scores == [0.5, None]  # one usable document: not failed
