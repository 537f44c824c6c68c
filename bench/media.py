"""Media benchmark: fetch + decode throughput from a local S3 endpoint, and what the cache saves.

``python -m bench.media [--threads 1,16] [--images 200] [--json]`` starts its own S3 endpoint
(moto, in a child process so it does not share this process's GIL), uploads generated media and prints:

- 200 small JPEGs (320x240, ~13 KB) fetched only, then fetched + decoded as 200 sides, with 1 versus N fetch
  threads (objects/s, MB/s);
- short mp4 videos (10 s, 640x360, 30 fps, distinct objects) resolved with 1 versus N threads (videos/s, MB/s);
- a batch of 50 jobs sharing one query image: fetches and time per job resolved alone, without a cache,
  versus the whole batch through ``MediaResolver.resolve_sides`` with the cache, and a next batch with the
  same query (served from the cache).

``run_media_bench`` returns the same figures as a dict (for ``rerankq bench``). ``photo_bytes`` and ``clip_bytes``
generate the test and benchmark media.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import os
import time
from typing import Any

from rerankq.cli.samples import clip_bytes, photo_bytes, video_codec
from rerankq.models.qwen3vl.vision import QwenVision

BUCKET = "rerankq-bench"


def _serve(port: int, ready: Any, stop: Any) -> None:
    import logging

    from rerankq.cli.cluster import S3Server

    logging.getLogger("werkzeug").setLevel(logging.ERROR)  # no access log line per request

    with S3Server(port=port):
        ready.set()
        stop.wait()


def _timed_resolve(settings: Any, sides: list[Any], budget: Any) -> tuple[float, Any]:
    from rerankq.media.resolver import MediaResolver

    with MediaResolver(settings, QwenVision()) as resolver:
        started = time.perf_counter()
        results = resolver.resolve_sides(sides, budget)
        elapsed = time.perf_counter() - started
        failed = [r for r in results if isinstance(r, Exception)]
        if failed:
            raise RuntimeError(f"benchmark media failed: {failed[0]}")
        return elapsed, resolver.stats


def _throughput(settings: Any, sides: list[Any], budget: Any, threads: int) -> dict[str, float]:
    tuned = settings.model_copy(update={"media": settings.media.model_copy(update={"fetch_threads": threads})})
    elapsed, stats = _timed_resolve(tuned, sides, budget)
    return {"threads": threads, "objects": stats.fetches, "seconds": round(elapsed, 3),
            "objects_per_s": round(stats.fetches / elapsed, 1),
            "mb_per_s": round(stats.bytes_fetched / elapsed / 1e6, 2)}


def _fetch_only(settings: Any, refs: list[str], threads: int) -> dict[str, float]:
    from concurrent.futures import ThreadPoolExecutor

    from rerankq.media.store import MediaStore

    tuned = settings.model_copy(update={"media": settings.media.model_copy(update={"fetch_threads": threads})})
    store = MediaStore(tuned)
    with ThreadPoolExecutor(threads) as pool:
        started = time.perf_counter()
        size = sum(len(data) for data in pool.map(store.fetch, refs))
        elapsed = time.perf_counter() - started
    store.close()
    return {"threads": threads, "objects": len(refs), "seconds": round(elapsed, 3),
            "objects_per_s": round(len(refs) / elapsed, 1), "mb_per_s": round(size / elapsed / 1e6, 2)}


def _cache_saving(settings: Any, s3: Any, budget: Any, jobs: int, images: int) -> dict[str, float]:
    """50 jobs, one query image, one document image each: per job without a cache, then as one batch."""
    from rerankq.media.resolver import MediaResolver
    from rerankq.media.sides import Side

    s3.put_object(Bucket=BUCKET, Key="shared/query.jpg", Body=photo_bytes(1024, 768, seed=999))
    query = Side(images=[f"s3://{BUCKET}/shared/query.jpg"])
    docs = [Side(images=[f"s3://{BUCKET}/img/{j % images}.jpg"]) for j in range(2 * jobs)]
    uncached = settings.model_copy(update={"media": settings.media.model_copy(update={"cache_bytes": 0})})
    with MediaResolver(uncached, QwenVision()) as resolver:  # each job alone, as a per-job pipeline would do it
        started = time.perf_counter()
        for j in range(jobs):
            resolver.resolve_sides([query, docs[j]], budget)
        alone_s, alone = time.perf_counter() - started, resolver.stats
    with MediaResolver(settings, QwenVision()) as resolver:
        started = time.perf_counter()
        resolver.resolve_sides([s for j in range(jobs) for s in (query, docs[j])], budget)
        batch_s, batch = time.perf_counter() - started, resolver.stats
        resolver.reset_stats()  # a second batch, same query, new documents: the query comes from the cache
        resolver.resolve_sides([s for j in range(jobs, 2 * jobs) for s in (query, docs[j])], budget)
        second = resolver.stats
    return {"jobs": jobs, "fetches_without_cache": alone.fetches, "fetches_with_cache": batch.fetches,
            "mb_without_cache": round(alone.bytes_fetched / 1e6, 2),
            "mb_with_cache": round(batch.bytes_fetched / 1e6, 2),
            "seconds_without_cache": round(alone_s, 3), "seconds_with_cache": round(batch_s, 3),
            "deduplicated": batch.deduplicated, "second_batch_fetches": second.fetches,
            "second_batch_cache_hits": second.cache_hits}


def run_media_bench(threads: tuple[int, ...] = (1, 16), images: int = 200, videos: int = 8,
                    jobs: int = 50) -> dict[str, Any]:
    """Start an S3 endpoint, upload media, measure; returns the figures (see the module doc)."""
    from rerankq.cli.cluster import S3Server, free_port
    from rerankq.media.sides import Side, VisionBudget
    from rerankq.settings import Settings

    for key, value in (("AWS_ACCESS_KEY_ID", "testing"), ("AWS_SECRET_ACCESS_KEY", "testing"),
                       ("AWS_DEFAULT_REGION", "us-east-1")):
        os.environ.setdefault(key, value)  # the benchmark's own endpoint accepts any credentials
    port, context = free_port(), multiprocessing.get_context("spawn")
    ready, stop = context.Event(), context.Event()
    server = context.Process(target=_serve, args=(port, ready, stop), daemon=True)
    server.start()
    try:
        if not ready.wait(60):
            raise RuntimeError("the benchmark's S3 endpoint did not start")
        s3 = S3Server(port=port).client()
        s3.create_bucket(Bucket=BUCKET)
        for i in range(images):
            s3.put_object(Bucket=BUCKET, Key=f"img/{i}.jpg", Body=photo_bytes(320, 240, seed=i))
        clip = clip_bytes(seconds=10, fps=30, width=640, height=360)
        for i in range(videos):
            s3.put_object(Bucket=BUCKET, Key=f"video/{i}.mp4", Body=clip)
        settings, budget = Settings(s3_endpoint_url=f"http://127.0.0.1:{port}"), VisionBudget()
        image_sides = [Side(images=[f"s3://{BUCKET}/img/{i}.jpg"]) for i in range(images)]
        video_sides = [Side(videos=[f"s3://{BUCKET}/video/{i}.mp4"]) for i in range(videos)]
        return {
            "images_fetch_only": [_fetch_only(settings, [s.images[0] for s in image_sides], n) for n in threads],
            "images": [_throughput(settings, image_sides, budget, n) for n in threads],
            "videos": [_throughput(settings, video_sides, budget, n) for n in threads],
            "video_bytes": len(clip), "video_codec": video_codec(),
            "cache": _cache_saving(settings, s3, budget, jobs, images),
        }
    finally:
        stop.set()
        server.join(10)


def _print(figures: dict[str, Any]) -> None:
    print("fetch + decode from a local S3 endpoint (moto, child process)")
    for kind in ("images_fetch_only", "images", "videos"):
        for row in figures[kind]:
            print(f"  {row['objects']:4d} {kind:17s} threads={row['threads']:<3d} {row['seconds']:7.3f} s  "
                  f"{row['objects_per_s']:8.1f} objects/s  {row['mb_per_s']:7.2f} MB/s")
    c = figures["cache"]
    print(f"cache, {c['jobs']} jobs sharing one query image:")
    print(f"  without cache (job by job): {c['fetches_without_cache']} fetches, {c['mb_without_cache']} MB, "
          f"{c['seconds_without_cache']} s")
    print(f"  with cache (one batch):     {c['fetches_with_cache']} fetches, {c['mb_with_cache']} MB, "
          f"{c['seconds_with_cache']} s, {c['deduplicated']} references shared in the batch")
    print(f"  next batch, same query:     {c['second_batch_fetches']} fetches, "
          f"{c['second_batch_cache_hits']} cache hit (the query)")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--threads", default="1,16", help="comma-separated fetch thread counts")
    parser.add_argument("--images", type=int, default=200)
    parser.add_argument("--videos", type=int, default=8)
    parser.add_argument("--jobs", type=int, default=50)
    parser.add_argument("--json", action="store_true", help="print one JSON object")
    args = parser.parse_args(argv)
    threads = tuple(int(t) for t in args.threads.split(","))
    figures = run_media_bench(threads, args.images, args.videos, args.jobs)
    print(json.dumps(figures)) if args.json else _print(figures)


if __name__ == "__main__":
    main()
