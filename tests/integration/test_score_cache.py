"""The score cache through real workers (tiny model, CPU, fp32), a private broker Redis, a cache Redis of its own
(maxmemory + allkeys-lru) and moto's S3 server: a second run of a job is served from the cache with exactly the
stored scores, by either scoring path; an overwritten S3 object and a changed preprocessing setting miss;
``"cache": false`` neither reads nor writes; a fresh fp32 score equals the cached one; a cache that goes down
fails no job; a cache URL that reaches the broker is refused."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import redis

from rerankq.cli.cluster import CACHE_ARGS, RedisServer, S3Server, free_port
from rerankq.cli.samples import image_bytes, noise_image
from rerankq.client import RerankClient
from tests.integration.conftest import MEDIA_BUCKET, WorkerProcess, start_worker, stop_worker
from tests.integration.conftest import run_clean as run

TOL = 2.5e-6  # 1e-5 in logit is at most 2.5e-6 in score (the sigmoid's slope is <= 1/4)


@pytest.fixture(scope="module")
def cache_server() -> Iterator[RedisServer]:
    with RedisServer(args=CACHE_ARGS) as server:
        yield server


def _worker(tmp: pytest.TempPathFactory, tiny: Path, redis_server: RedisServer, s3_server: S3Server,
            cache_url: str, share: bool) -> WorkerProcess:
    return start_worker(tiny, redis_server.url, s3_server.url, tmp.mktemp("worker"), RERANKQ_CACHE__REDIS_URL=cache_url,
                        RERANKQ_SCORING__SHARE_PREFIX=str(share).lower(), RERANKQ_BATCH__FLUSH_INTERVAL_MS="50",
                        RERANKQ_CACHE__RETRY_S="60")


@pytest.fixture(scope="module")
def sharing(tmp_path_factory, tiny_model_dir, redis_server, s3_server, cache_server):  # type: ignore[no-untyped-def]
    worker = _worker(tmp_path_factory, tiny_model_dir, redis_server, s3_server, cache_server.url, share=True)
    yield worker
    stop_worker(worker)


@pytest.fixture(scope="module")
def plain(tmp_path_factory, tiny_model_dir, redis_server, s3_server, cache_server):  # type: ignore[no-untyped-def]
    worker = _worker(tmp_path_factory, tiny_model_dir, redis_server, s3_server, cache_server.url, share=False)
    yield worker
    stop_worker(worker)


def mixed_job(media: dict[str, str]) -> dict[str, Any]:
    """A job of its own (a fresh query text): text, image, video-file and frame-list documents."""
    return {"instruction": "Find the matching product.",
            "query": {"text": f"a striped cat {uuid.uuid4().hex}", "image": media["cat.png"]},
            "documents": [{"text": "a dog on a sofa"}, {"image": media["dog.jpg"]}, {"video": media["clip.mp4"]},
                          {"text": "four frames", "video": [media[f"frame{i}.png"] for i in range(4)]}],
            "fps": 2.0}


def cache_metrics(worker: WorkerProcess) -> dict[str, float]:
    return {name: worker.metric(f"rerankq_cache_{name}_total") for name in ("hits", "misses", "pairs_saved", "errors")}


def test_a_second_run_is_served_from_the_cache_with_the_same_scores(sharing: WorkerProcess,
                                                                    media: dict[str, str]) -> None:
    job = mixed_job(media)
    before = cache_metrics(sharing)
    first = run(sharing, job)
    assert first["usage"]["cached_pairs"] == 0 and first["usage"]["cached_indices"] == []
    assert first["usage"]["tokens"] > 0
    middle = cache_metrics(sharing)
    assert middle["misses"] - before["misses"] == 4 and middle["hits"] == before["hits"]
    second = run(sharing, job)
    assert second["scores"] == first["scores"]  # exactly the stored floats
    assert second["results"] == first["results"]
    assert second["usage"] == {"pairs": 4, "tokens": 0, "cached_pairs": 4, "cached_indices": [0, 1, 2, 3]}
    after = cache_metrics(sharing)
    assert after["hits"] - middle["hits"] == 4 and after["pairs_saved"] - middle["pairs_saved"] == 4
    assert after["misses"] == middle["misses"] and after["errors"] == 0
    with RerankClient(sharing.settings) as client:
        job_id = client.submit(job)
        client.result(job_id, timeout=60)
        assert client.status(job_id)["progress"] == {"pairs_done": 4, "pairs_total": 4}


def test_the_plain_path_reads_what_the_shared_path_wrote_and_a_fresh_score_matches(
        sharing: WorkerProcess, plain: WorkerProcess, media: dict[str, str]) -> None:
    job = mixed_job(media)
    cached = run(sharing, job)["scores"]
    hit = run(plain, job)
    assert hit["scores"] == cached and hit["usage"]["cached_pairs"] == 4
    fresh = run(plain, {**job, "cache": False})  # no shared prefix, not from the cache: computed again
    assert fresh["usage"]["cached_pairs"] == 0 and fresh["usage"]["tokens"] > 0
    assert fresh["scores"] == pytest.approx(cached, abs=TOL)


def test_cache_false_neither_reads_nor_writes(sharing: WorkerProcess, media: dict[str, str]) -> None:
    job = mixed_job(media)
    assert run(sharing, {**job, "cache": False})["usage"]["cached_pairs"] == 0
    assert run(sharing, job)["usage"]["cached_pairs"] == 0  # the opted-out run stored nothing
    assert run(sharing, {**job, "cache": False})["usage"]["cached_pairs"] == 0  # and reads nothing
    assert run(sharing, job)["usage"]["cached_pairs"] == 4


def test_an_overwritten_s3_object_misses_and_is_scored_afresh(sharing: WorkerProcess, s3: Any,
                                                              reference: Any) -> None:
    key = f"overwritten/{uuid.uuid4().hex}.png"
    s3.put_object(Bucket=MEDIA_BUCKET, Key=key, Body=image_bytes(noise_image(64, 64, seed=21)))
    job = {"query": {"text": f"a cat {uuid.uuid4().hex}"},
           "documents": [{"text": "a cat"}, {"image": f"s3://{MEDIA_BUCKET}/{key}"}]}
    first = run(sharing, job)
    assert run(sharing, job)["usage"]["cached_pairs"] == 2
    s3.put_object(Bucket=MEDIA_BUCKET, Key=key, Body=image_bytes(noise_image(64, 64, seed=22)))  # a new ETag
    second = run(sharing, job)
    assert second["usage"]["cached_indices"] == [0]  # the text document still hits
    assert second["scores"][0] == first["scores"][0]
    assert second["scores"][1] != first["scores"][1]
    assert second["scores"] == pytest.approx(reference(job), abs=TOL)  # the new image, not a stale decode
    assert run(sharing, job)["scores"] == second["scores"]


def test_a_changed_preprocessing_setting_misses(sharing: WorkerProcess, media: dict[str, str]) -> None:
    job = {"query": {"text": f"a clip {uuid.uuid4().hex}"},
           "documents": [{"text": "a clip of noise"}, {"image": media["dog.jpg"]}, {"video": media["clip.mp4"]}]}
    run(sharing, job)
    assert run(sharing, job)["usage"]["cached_pairs"] == 3
    # media budgets key pairs with media only: the text pair keeps its score
    assert run(sharing, {**job, "max_frames": 8})["usage"]["cached_indices"] == [0]
    assert run(sharing, {**job, "fps": 0.5})["usage"]["cached_indices"] == [0]
    assert run(sharing, {**job, "instruction": "Another task."})["usage"]["cached_pairs"] == 0
    assert run(sharing, {**job, "max_tokens_per_doc": 4})["usage"]["cached_pairs"] == 0


def test_a_cache_that_goes_down_fails_no_job(tmp_path_factory: pytest.TempPathFactory, tiny_model_dir: Path,
                                             redis_server: RedisServer, s3_server: S3Server,
                                             media: dict[str, str]) -> None:
    with RedisServer(args=CACHE_ARGS) as doomed:
        worker = _worker(tmp_path_factory, tiny_model_dir, redis_server, s3_server, doomed.url, share=True)
        try:
            job = mixed_job(media)
            first = run(worker, job)
            assert run(worker, job)["usage"]["cached_pairs"] == 4
            doomed.stop()
            for _ in range(2):  # the failing call, then the rounds that leave the cache alone
                again = run(worker, job)
                assert again["usage"]["cached_pairs"] == 0
                assert again["scores"] == pytest.approx(first["scores"], abs=TOL)
            assert worker.metric("rerankq_cache_errors_total") >= 1
            assert worker.metric("rerankq_jobs_total", 'state="failed"') == 0
        finally:
            stop_worker(worker)


def test_the_store_refuses_the_brokers_redis_and_survives_a_dead_port(redis_url: str) -> None:
    from rerankq.settings import Settings
    from rerankq.worker.metrics import Metrics
    from rerankq.worker.scorecache import ScoreCache

    broker = redis.Redis.from_url(redis_url)
    same = ScoreCache(Settings(redis_url=redis_url, cache={"redis_url": redis_url}).cache, Metrics(), broker)
    assert same.get_many(["k"]) is None and same.refused and not same.available()
    same.put_many({"k": 0.5})
    assert broker.keys("rerankq:score:*") == []
    dead_url = f"redis://127.0.0.1:{free_port()}/0"
    metrics = Metrics()
    dead_settings = Settings(redis_url=redis_url, cache={"redis_url": dead_url, "retry_s": 60})
    dead = ScoreCache(dead_settings.cache, metrics, broker)
    assert dead.get_many(["k"]) is None and not dead.available()
    dead.put_many({"k": 0.5})  # left alone: no second failure
    assert metrics.cache_errors._value.get() == 1  # type: ignore[attr-defined]
    broker.close()


def test_model_identity_changes_with_max_length_and_seed(tiny_model_dir: Path) -> None:
    from rerankq.models.loading import LoadOptions, load_model

    tiny = load_model(str(tiny_model_dir), LoadOptions(max_length=1024))
    again = load_model(str(tiny_model_dir), LoadOptions(max_length=1024))
    assert tiny.cache_identity() == again.cache_identity()
    assert '"device": "cpu"' in tiny.cache_identity() and '"dtype": "float32"' in tiny.cache_identity()
    assert '"weights": "sha256:' in tiny.cache_identity()
    assert load_model(str(tiny_model_dir), LoadOptions(max_length=512)).cache_identity() != tiny.cache_identity()
    seeded = [load_model("random:tiny", LoadOptions(seed=s)).cache_identity() for s in (0, 1)]
    assert seeded[0] != seeded[1] and '"weights": "random:tiny|seed=0' in seeded[0]


class InProcess:
    """One worker's round engine, in this process (the fake model), with the worker's score cache on a real
    Redis: a round's cache look-ups, media, pairs, forward pass and write-back, as ``rerankq.worker.runtime``
    runs them."""

    def __init__(self, redis_url: str, s3_url: str, cache_url: str) -> None:
        from rerankq.media.resolver import MediaResolver
        from rerankq.models.engine import RoundEngine
        from rerankq.models.fake import load_fake
        from rerankq.models.options import LoadOptions
        from rerankq.settings import Settings
        from rerankq.worker.metrics import Metrics
        from rerankq.worker.scorecache import ScoreCache

        self.settings = Settings(redis_url=redis_url, s3_endpoint_url=s3_url, cache={"redis_url": cache_url})
        self.model = load_fake("fake:hash", LoadOptions())
        self.resolver = MediaResolver(self.settings, self.model.preprocessor)
        self.broker = redis.Redis.from_url(redis_url)
        self.cache = ScoreCache(self.settings.cache, Metrics(), self.broker)
        self.engine = RoundEngine(self.model, self.resolver, self.settings.batch, self.cache)

    def round(self, job: dict[str, Any]) -> Any:
        from concurrent.futures import Future

        from rerankq.models.contract import instruction_for
        from rerankq.schema import parse_job
        from rerankq.worker.held import HeldJob, engine_input

        held = HeldJob(parse_job({**job, "job_id": uuid.uuid4().hex}, self.settings), Future())
        instruction = instruction_for(self.engine.model, self.settings.instruction)
        plan = self.engine.prepare([engine_input(held, self.settings.limits, instruction, False)])
        outcome = next(o for p in self.engine.score(plan) for o in p.finished)
        return Ran(outcome.scores, dict(zip(outcome.cached, (outcome.scores[i] for i in outcome.cached),
                                            strict=True)), plan.jobs[0].lookup.keys)

    def close(self) -> None:
        self.resolver.close()
        self.broker.close()


@dataclass
class Ran:
    """What a round made of one job: scores, those from the cache (index → score), the pairs' cache keys."""

    scores: list[float | None]
    cached: dict[int, float]
    keys: dict[int, str]


@pytest.fixture()
def in_process(redis_url: str, s3_server: S3Server, cache_server: RedisServer) -> Iterator[InProcess]:
    worker = InProcess(redis_url, s3_server.url, cache_server.url)
    yield worker
    worker.close()


def test_hits_found_before_the_media_are_neither_fetched_nor_decoded(in_process: InProcess,
                                                                     media: dict[str, str]) -> None:
    job = mixed_job(media)
    first = in_process.round(job)
    assert first.cached == {} and in_process.resolver.stats.fetches > 0
    in_process.resolver.reset_stats()
    second = in_process.round(job)
    assert second.cached == dict(enumerate(first.scores)) and second.scores == first.scores
    stats = in_process.resolver.stats
    assert stats.fetches == 0 and stats.cache_hits == stats.cache_misses == 0  # not even the decoded-media cache
    assert stats.requests == 1 + 1 + 1 + 4  # one HEAD each: the query image, the image, the clip, the 4 frames


def test_media_that_cannot_be_told_before_a_fetch_are_looked_up_after_it(in_process: InProcess,
                                                                         media: dict[str, str]) -> None:
    in_process.resolver.store.identify = lambda ref: None  # type: ignore[method-assign]  # as for https:// bytes
    job = mixed_job(media)
    first = in_process.round(job)
    assert first.cached == {} and len(first.keys) == 4  # keyed by the bytes decoded, and written back
    second = in_process.round(job)
    assert second.cached == dict(enumerate(first.scores))
    assert in_process.resolver.stats.fetches > 0  # fetched and decoded, but not run through the model
