"""The round engine's stages with the fake scorer (``fake:hash``, named as what it is): failure isolation in a
forward pass, pairs settled without a pass (cache hits, unreadable documents), outcomes in job order, result
assembly. The engine against a real Redis score cache and real S3 media is tested in
``tests/integration/test_score_cache.py``; against the real Qwen3-VL architecture in ``test_compat.py``."""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import pytest

from rerankq.media.resolver import MediaResolver
from rerankq.media.sides import Side
from rerankq.models.engine import JobInput, RoundEngine, score_isolating
from rerankq.models.fake import load_fake
from rerankq.models.options import LoadOptions
from rerankq.results import build_result, result_location
from rerankq.settings import BatchSettings, Settings


class Scores:
    """A ``ScoreStore`` in a dict: the engine's side of the cache, without the cache's Redis."""

    def __init__(self) -> None:
        self.stored: dict[str, float] = {}
        self.asked: list[list[str]] = []

    def available(self) -> bool:
        return True

    def get_many(self, keys: Sequence[str]) -> Mapping[str, float]:
        self.asked.append(list(keys))
        return {k: self.stored[k] for k in keys if k in self.stored}

    def put_many(self, scores: Mapping[str, float]) -> None:
        self.stored.update(scores)


def engine(scores: Scores | None = None, max_pairs: int = 64) -> RoundEngine:
    model = load_fake("fake:hash", LoadOptions())
    return RoundEngine(model, MediaResolver(Settings(_env_file=None), model.preprocessor),  # type: ignore[call-arg]
                       BatchSettings(max_pairs=max_pairs), scores)


def job(job_id: str, documents: list[str | dict[str, str]], query: str = "q") -> JobInput:
    return JobInput(job_id, Side.from_dict(query), [Side.from_dict(d) for d in documents], "inst")


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


def test_jobs_share_passes_and_each_ends_with_its_last_pair() -> None:
    e = engine(max_pairs=3)
    plan = e.prepare([job("a", ["a0", "a1"]), job("b", ["b0", "b1", "b2", "b3"])])
    assert [len(b) for b in plan.batches] == [3, 3] and len(plan.units) == 6
    passes = list(e.score(plan))
    assert sum(len(p.pairs) for p in passes) == 6 and max(p.jobs for p in passes) == 2  # cross-job passes
    ended = [o.job.id for p in passes for o in p.finished]
    assert sorted(ended) == ["a", "b"] and passes[-1].left == 0
    alone = e.run([job("b", ["b0", "b1", "b2", "b3"])])[0]
    both = {o.job.id: o for p in passes for o in p.finished}
    assert both["b"].scores == alone.scores  # a pair's score does not depend on its pass-mates


def test_documents_from_the_cache_are_neither_resolved_nor_scored() -> None:
    scores = Scores()
    e = engine(scores)
    first = e.run([job("j", ["d0", "d1", "d2"])])[0]
    assert first.cached == () and len(scores.stored) == 3
    plan = e.prepare([job("j", ["d0", "d1", "d2", "d3"])])
    prepared = plan.jobs[0]
    assert sorted(prepared.lookup.hits) == [0, 1, 2] and list(prepared.pairs) == [3]  # only the new one
    outcome = next(o for p in e.score(plan) for o in p.finished)
    assert outcome.scores[:3] == first.scores and outcome.cached == (0, 1, 2)
    result = outcome.result("m")
    assert result["usage"]["cached_pairs"] == 3 and result["usage"]["cached_indices"] == [0, 1, 2]
    assert result["usage"]["tokens"] == prepared.pairs[3].length  # only what ran through the model


def test_a_job_whose_every_document_is_cached_ends_before_any_pass() -> None:
    scores = Scores()
    e = engine(scores)
    e.run([job("j", ["d0", "d1"])])
    plan = e.prepare([job("k", ["d0", "d1"]), job("l", ["x"])])
    passes = list(e.score(plan))
    assert [o.job.id for o in passes[0].finished] == ["k"] and passes[0].pairs == []
    assert [o.job.id for o in passes[1].finished] == ["l"]


def test_unreadable_documents_get_errors_and_the_rest_are_scored() -> None:
    e = engine()
    outcome = e.run([job("j", ["d0", {"image": "file:///nonexistent/x.png"}, "d2"])])[0]
    assert outcome.scores[1] is None and list(outcome.errors) == [1] and outcome.failure is None
    assert outcome.scores[0] is not None and outcome.scores[2] is not None
    gone = e.run([job("g", [{"image": "file:///nonexistent/y.png"}])])[0]
    assert gone.failure is not None and gone.failure.startswith("every document failed")


def test_an_unreadable_query_fails_its_job_alone() -> None:
    e = engine()
    bad, good = e.run([job("bad", ["d"], query={"image": "file:///nonexistent/q.png"}),  # type: ignore[arg-type]
                       job("good", ["d"])])
    assert bad.failure is not None and bad.failure.startswith("query:") and bad.query_error is not None
    assert good.failure is None and good.scores[0] is not None


def test_cancelled_jobs_are_dropped_before_their_pass() -> None:
    e = engine(max_pairs=2)
    plan = e.prepare([job("a", ["a0", "a1", "a2", "a3"]), job("b", ["b0", "b1"])])
    passes = list(e.score(plan, keep=lambda ids: [i for i in ids if i != "a"]))
    assert [o.job.id for p in passes for o in p.finished] == ["b"]
    assert all(job_id == "b" for p in passes for job_id, _ in p.pairs)


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


def test_fresh_scores_reach_the_cache_when_the_last_pass_was_cancelled() -> None:
    scores = Scores()
    e = engine(scores, max_pairs=2)
    plan = e.prepare([job("a", ["a0", "a1"]), job("z", ["z0", "z1", "z2", "z3", "z4", "z5"])])
    passes = list(e.score(plan, keep=lambda ids: [i for i in ids if i != "z"]))
    assert [o.job.id for p in passes for o in p.finished] == ["a"]
    assert len(scores.stored) == 2  # a's scores, though no pass after a's last one ran
