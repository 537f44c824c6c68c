"""Embedding-alone benchmark: one input per forward pass (the official script's way, one call per input)
versus many inputs per pass under the token budget.

    python -m bench.embedding                                   # the tiny checkpoint, built in a temp dir
    python -m bench.embedding --model /path/to/checkpoint --kinds text,image
    python -m bench.embedding --model random:embed-2b --device cuda --inputs 128

Prints, per input kind, inputs/s for both ways, the speed-up and the largest |Δ| between their vectors.
``--json`` prints one JSON object instead. Preparation (tokenising, vision preprocessing) is timed apart.

``--engine`` runs embedding jobs the way a worker does instead: ``--jobs`` jobs of ``--per-job`` inputs per kind
(media as ``file://`` references, fetched, decoded and identified by the worker's ``MediaResolver``) through
``rerankq.models.engine.RoundEngine`` (cache look-up, media, preparation, passes under ``batch.max_tokens`` /
``batch.max_pairs``, write-back, each job's result assembled), all jobs in one round:

    python -m bench.embedding --engine                          # without the vector cache
    python -m bench.embedding --engine --cache --model random:embed-small --kinds text,image,mixed

``--cache`` adds the worker's ``ScoreCache`` on a private redis-server (``maxmemory`` + ``allkeys-lru``): each
repeat runs the jobs without it (``none``), then with it emptied (``cold``: every input embedded and stored)
and again (``warm``: every input from the cache), alternating so that the ratios come from one noisy machine's
same minutes; the best time of each counts. It prints inputs/s of each, the speed-up of warm and of cold over
none, and the largest |Δ| between the warm (cached) vectors and the cold run's (must be 0: the cache stores
float32 exactly) and the uncached run's.

``--queue`` [``--cache``] runs the same jobs end to end instead: a private cluster (broker and cache
redis-servers, moto's S3 server with the media, one ``rerankq worker --model SPEC``), each kind's jobs submitted at
once through ``RerankClient`` and waited for; ``none`` is the jobs with ``"cache": false``.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import sys
import tempfile
import time
import uuid
from collections.abc import Callable, Iterator, Sequence
from contextlib import ExitStack, contextmanager
from pathlib import Path
from typing import Any, TypeVar

import numpy as np

from rerankq.cli.samples import image_bytes, mp4_bytes, noise_image
from rerankq.media.decode import decode_video
from rerankq.media.sides import ResolvedSide, Side, VisionBudget
from rerankq.models.options import LoadOptions
from rerankq.models.qwen3vl.vision import image_input, video_input
from rerankq.models.qwen3vl_embed.loading import load_embedder
from rerankq.models.qwen3vl_embed.model import Embedder

T = TypeVar("T")
WORDS = ("lightweight", "trail", "backpack", "nylon", "side", "bottle", "pocket", "padded", "straps", "rain",
         "cover", "hiking", "a", "photo", "of")


def _text(n_words: int, seed: int) -> str:
    return " ".join(WORDS[(seed + i * 7) % len(WORDS)] for i in range(n_words))


def input_factory(kind: str) -> Callable[[int], ResolvedSide]:
    """Inputs of one kind: texts of 8 to 120 words, ~300-token images, an 8 s clip (+ a caption), or mixed."""
    budget = VisionBudget()
    if kind == "text":
        return lambda i: ResolvedSide(texts=[_text(8 + (i * 37) % 113, i)])
    if kind == "image":
        return lambda i: ResolvedSide(vision=[image_input(noise_image(480 + 16 * (i % 8), 640, seed=i), budget)])
    if kind == "video":
        clip = decode_video(mp4_bytes(seconds=8.0, fps=10, width=320, height=240), budget.fps, budget.max_frames)
        item = video_input(clip.frames, clip.indices, clip.fps, budget)
        return lambda i: ResolvedSide(vision=[item], texts=[f"clip {i}"])
    if kind == "mixed":
        makers = [input_factory(k) for k in ("text", "image", "text", "video")]
        return lambda i: makers[i % len(makers)](i)
    raise ValueError(f"unknown input kind {kind!r}: text, image, video or mixed")


def _timed(run: Callable[[], T]) -> tuple[T, float]:
    start = time.perf_counter()
    out = run()
    return out, time.perf_counter() - start


def bench_kind(embedder: Embedder, kind: str, n: int, max_batch_tokens: int, max_batch_inputs: int,
               repeat: int = 3) -> dict[str, Any]:
    """Both ways ``repeat`` times, alternating (the best time of each counts: shared machines are noisy)."""
    make = input_factory(kind)
    inputs = [make(i) for i in range(n)]
    prepared, prep_s = _timed(lambda: [embedder.prepare(x) for x in inputs])
    embedder.max_batch_tokens = max_batch_tokens
    embedder.embed_prepared(prepared[:2])  # warm-up
    alone_s = batched_s = float("inf")
    for _ in range(max(repeat, 1)):
        embedder.max_batch_inputs = 1
        alone, seconds = _timed(lambda: embedder.embed_prepared(prepared))
        alone_s = min(alone_s, seconds)
        embedder.max_batch_inputs = max_batch_inputs
        batched, seconds = _timed(lambda: embedder.embed_prepared(prepared))
        batched_s = min(batched_s, seconds)
    return {"kind": kind, "inputs": n, "tokens": sum(p.length for p in prepared),
            "prepare_inputs_per_s": n / prep_s, "one_per_pass_inputs_per_s": n / alone_s,
            "batched_inputs_per_s": n / batched_s, "speedup": alone_s / batched_s,
            "max_abs_delta": float(np.abs(alone - batched).max())}


def side_factory(kind: str, media_dir: Path) -> Callable[[int], Side]:
    """Inputs as a job carries them (``input_factory``'s, media written to ``media_dir`` as ``file://`` refs)."""
    if kind == "text":
        return lambda i: Side(texts=[_text(8 + (i * 37) % 113, i)])
    if kind == "image":
        def image(i: int) -> Side:
            path = media_dir / f"image-{i}.png"
            path.write_bytes(image_bytes(noise_image(480 + 16 * (i % 8), 640, seed=i)))
            return Side(images=[path.as_uri()])
        return image
    if kind == "video":
        def video(i: int) -> Side:
            path = media_dir / f"clip-{i}.mp4"
            path.write_bytes(mp4_bytes(seconds=8.0, fps=10, width=320, height=240, seed=i))
            return Side(videos=[path.as_uri()], texts=[f"clip {i}"])
        return video
    if kind == "mixed":
        makers = [side_factory(k, media_dir) for k in ("text", "image", "text", "video")]
        return lambda i: makers[i % len(makers)](i)
    raise ValueError(f"unknown input kind {kind!r}: text, image, video or mixed")


@contextmanager
def vector_cache(settings: Any) -> Iterator[tuple[Any, Any]]:
    """The worker's ``ScoreCache`` on a private redis-server of its own (maxmemory + allkeys-lru), and
    ``settings`` with it (``cache.redis_url`` set: the resolver then identifies what it fetches, as a worker's)."""
    from rerankq.cli.cluster import CACHE_ARGS, RedisServer
    from rerankq.worker.metrics import Metrics
    from rerankq.worker.scorecache import ScoreCache

    with RedisServer(args=CACHE_ARGS) as server:
        cached = settings.model_copy(update={"cache": settings.cache.model_copy(update={"redis_url": server.url})})
        cache = ScoreCache(cached.cache, Metrics())
        try:
            yield cache, cached
        finally:
            cache.client.close()


def engine_round(model: Any, settings: Any, cache: Any | None, jobs: Sequence[Side], per_job: int,
                 ) -> tuple[float, np.ndarray, int, int]:
    """All jobs through a fresh ``RoundEngine`` (and a fresh ``MediaResolver``: no decoded media kept from an
    earlier run), each job's result assembled as the worker writes it. Returns seconds, the vectors in input
    order, the inputs the cache answered and the tokens run through the model."""
    from rerankq.media.resolver import MediaResolver
    from rerankq.models.engine import JobInput, RoundEngine

    resolver = MediaResolver(settings, model.preprocessor)
    try:
        engine = RoundEngine(model, resolver, settings.batch, cache)
        run_id = uuid.uuid4().hex[:8]
        inputs = [JobInput(f"bench-{run_id}-{j}", None, list(jobs[j * per_job:(j + 1) * per_job]), "", task="embed")
                  for j in range(len(jobs) // per_job)]
        start = time.perf_counter()
        outcomes = engine.run(inputs)
        results = [o.result(model.name) for o in outcomes]
        seconds = time.perf_counter() - start
    finally:
        resolver.close()
    failed = [o.error or o.errors for o in outcomes if o.error or o.errors]
    if len(results) != len(inputs) or failed:
        raise RuntimeError(f"bench embedding jobs failed: {failed[:3]}")
    vectors = np.stack([np.asarray(v, dtype=np.float32) for o in outcomes for v in o.scores])
    return seconds, vectors, sum(len(o.cached) for o in outcomes), sum(o.tokens for o in outcomes)


Run = Callable[[str], tuple[float, np.ndarray, int, int]]  # none|cold|warm → seconds, vectors, cached, tokens


def measure_runs(kind: str, n_jobs: int, n: int, run: Run, cached_runs: bool, repeat: int) -> dict[str, Any]:
    """``none`` (no cache), and with ``cached_runs``: ``cold`` (``run`` empties the cache first) then ``warm``;
    ``repeat`` times, alternating, the best time of each counts. Raises unless cold was answered by the cache
    for none of the inputs and warm for all of them, with no token run."""
    runs = ["none", "cold", "warm"] if cached_runs else ["none"]
    best = dict.fromkeys(runs, float("inf"))
    vectors: dict[str, np.ndarray] = {}
    cached: dict[str, int] = {}
    tokens: dict[str, int] = {}
    for _ in range(max(repeat, 1)):
        for name in runs:
            seconds, vectors[name], cached[name], tokens[name] = run(name)
            best[name] = min(best[name], seconds)
    row: dict[str, Any] = {"kind": kind, "jobs": n_jobs, "inputs": n, "tokens": tokens["none"],
                           "none_inputs_per_s": n / best["none"]}
    if cached_runs:
        if cached["cold"] != 0 or cached["warm"] != n or tokens["warm"] != 0:
            raise RuntimeError(f"cache runs not as expected: cold answered {cached['cold']}, warm {cached['warm']} "
                               f"of {n} inputs, warm ran {tokens['warm']} tokens")
        row.update({"cold_inputs_per_s": n / best["cold"], "warm_inputs_per_s": n / best["warm"],
                    "warm_speedup": best["none"] / best["warm"], "cold_speedup": best["none"] / best["cold"],
                    "cached_inputs": cached["warm"],
                    "max_abs_delta_cached_vs_stored": float(np.abs(vectors["warm"] - vectors["cold"]).max()),
                    "max_abs_delta_cached_vs_uncached": float(np.abs(vectors["warm"] - vectors["none"]).max())})
    return row


def bench_engine_kind(model: Any, settings: Any, kind: str, n_jobs: int, per_job: int,
                      cache: tuple[Any, Any] | None, media_dir: Path, repeat: int = 3) -> dict[str, Any]:
    """``measure_runs`` through the round engine; ``cache``: ``vector_cache``'s (cache, settings)."""
    make = side_factory(kind, media_dir)
    sides = [make(i) for i in range(n_jobs * per_job)]
    engine_round(model, settings, None, sides[:2], 2)  # warm-up (a fresh resolver per run: media decoded anew)
    if cache is not None:
        engine_round(model, cache[1], cache[0], sides[:2], 2)  # the cache's first contact (its checks) too

    def run(name: str) -> tuple[float, np.ndarray, int, int]:
        if name == "none" or cache is None:
            return engine_round(model, settings, None, sides, per_job)
        if name == "cold":
            cache[0].client.flushdb()
        return engine_round(model, cache[1], cache[0], sides, per_job)

    return measure_runs(kind, n_jobs, len(sides), run, cache is not None, repeat)


def queue_inputs(kind: str, n: int, s3: Any, bucket: str) -> list[Any]:
    """``side_factory``'s inputs as a job's ``inputs``: texts as strings, media uploaded to ``bucket``."""
    with tempfile.TemporaryDirectory() as tmp:
        sides = [side_factory(kind, Path(tmp))(i) for i in range(n)]
        out: list[Any] = []
        for i, side in enumerate(sides):
            item: dict[str, Any] = {"text": side.texts[0]} if side.texts else {}
            for field, refs in (("image", side.images), ("video", side.videos)):
                for ref in refs:
                    key = f"embed-bench/{kind}/{i}-{Path(ref).name}"
                    s3.put_object(Bucket=bucket, Key=key, Body=Path(ref.removeprefix("file://")).read_bytes())
                    item[field] = f"s3://{bucket}/{key}"
            out.append(item["text"] if list(item) == ["text"] else item)
    return out


def queue_round(client: Any, requests: list[dict[str, Any]], timeout: float) -> tuple[float, np.ndarray, int, int]:
    """Submit every job at once through the SDK and wait for all: seconds, vectors, inputs cached, tokens."""
    start = time.perf_counter()
    ids = client.submit_many(requests)
    results = dict(client.as_completed(ids, timeout=timeout))
    seconds = time.perf_counter() - start
    failed = [r for r in results.values() if isinstance(r, Exception) or r["errors"]]
    if failed:
        raise RuntimeError(f"bench embedding jobs failed: {failed[:3]}")
    ordered = [results[i] for i in ids]
    vectors = np.array([v for r in ordered for v in r["embeddings"]], dtype=np.float32)
    return (seconds, vectors, sum(r["usage"]["cached_inputs"] for r in ordered),
            sum(r["usage"]["tokens"] for r in ordered))


def queue_main(args: argparse.Namespace, spec: str) -> dict[str, Any]:
    """A private cluster (``bench.cache.start_cluster``: broker and cache redis-servers, moto's S3, one ``rerankq
    worker``); each kind's jobs submitted at once with ``RerankClient`` (``"cache": false`` for ``none``)."""
    import redis

    from bench.cache import start_cluster
    from bench.throughput import BUCKET
    from rerankq.client import RerankClient

    rows = []
    with ExitStack() as stack:
        settings, _metrics, cache_url = start_cluster(stack, spec, args.device)
        client = stack.enter_context(RerankClient(settings))
        s3 = client.results.client
        with contextlib.suppress(Exception):  # exists already
            s3.create_bucket(Bucket=BUCKET)
        cache = stack.enter_context(redis.Redis.from_url(cache_url))
        first: dict[str, Any] = {}
        for kind in args.kinds.split(","):
            inputs = queue_inputs(kind, args.jobs * args.per_job, s3, BUCKET)
            jobs = [{"task": "embed", "inputs": inputs[j * args.per_job:(j + 1) * args.per_job]}
                    for j in range(args.jobs)]
            first = client.embed(inputs[:2], timeout=args.timeout)  # warm-up, the cache's first contact too

            def run(name: str, jobs: list[dict[str, Any]] = jobs) -> tuple[float, np.ndarray, int, int]:
                if name == "cold":
                    cache.flushdb()
                wanted = [{**j, "cache": False} for j in jobs] if name == "none" else jobs
                return queue_round(client, wanted, args.timeout)

            rows.append(measure_runs(kind, args.jobs, len(inputs), run, args.cache, args.repeat))
    return {"model": first.get("model", spec), "device": args.device, "dtype": args.dtype,
            "dims": first.get("dimensions"), "mode": "queue",
            "cache": bool(args.cache), "results": rows}


def engine_main(args: argparse.Namespace, spec: str) -> dict[str, Any]:
    from rerankq.models.loading import load_model
    from rerankq.settings import Settings

    model = load_model(spec, LoadOptions(device=args.device, dtype=args.dtype))
    if model.capabilities.task != "embed":
        raise SystemExit(f"--model {spec!r} is not an embedding model (random:embed-SIZE or an embedding checkpoint)")
    settings = Settings(_env_file=None, allow_file_urls=True,  # type: ignore[call-arg]
                        batch={"max_tokens": args.max_batch_tokens, "max_pairs": args.max_batch_inputs})
    rows = []
    with tempfile.TemporaryDirectory() as media, (vector_cache(settings) if args.cache else _nothing()) as cache:
        for kind in args.kinds.split(","):
            (Path(media) / kind).mkdir()
            rows.append(bench_engine_kind(model, settings, kind, args.jobs, args.per_job, cache, Path(media) / kind,
                                          args.repeat))
    embedder = model.embedder
    return {"model": model.name, "device": args.device, "dtype": str(embedder.dtype), "dims": embedder.hidden_size,
            "mode": "engine", "cache": bool(args.cache), "results": rows}


@contextmanager
def _nothing() -> Iterator[None]:
    yield None


def _rate(per_s: float) -> str:
    return f"{per_s:.1f}" if per_s >= 10 else f"{per_s:.2f}"


def print_engine(report: dict[str, Any]) -> None:
    path = "through the round engine" if report["mode"] == "engine" else "through the queue (one worker, the SDK)"
    print(f"{report['model']} on {report['device']} ({report['dtype']}, {report['dims']} dims), "
          f"{path}, {'with and without' if report['cache'] else 'without'} the vector cache")
    head = f"{'kind':<7}{'jobs':>5}{'inputs':>7}{'tokens':>8}{'none /s':>10}"
    if report["cache"]:
        head += f"{'cold /s':>10}{'warm /s':>10}{'warm/none':>11}{'cold/none':>11}{'|Δ| stored':>12}{'|Δ| fresh':>11}"
    print(head)
    for r in report["results"]:
        line = f"{r['kind']:<7}{r['jobs']:>5}{r['inputs']:>7}{r['tokens']:>8}{_rate(r['none_inputs_per_s']):>10}"
        if report["cache"]:
            line += (f"{_rate(r['cold_inputs_per_s']):>10}{_rate(r['warm_inputs_per_s']):>10}"
                     f"{r['warm_speedup']:>10.1f}x"
                     f"{r['cold_speedup']:>10.2f}x{r['max_abs_delta_cached_vs_stored']:>12.1e}"
                     f"{r['max_abs_delta_cached_vs_uncached']:>11.1e}")
        print(line)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.embedding", description=__doc__.split("\n")[0])
    parser.add_argument("--model", default=None, help="checkpoint dir or random:embed-2b|8b|small|tiny "
                        "(default: the tiny checkpoint, built in a temp dir)")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--dtype", default="auto")
    parser.add_argument("--kinds", default=None, help="text,image,video,mixed (default: all; with --engine: "
                        "text,image,mixed)")
    parser.add_argument("--inputs", type=int, default=32, help="inputs per kind")
    parser.add_argument("--engine", action="store_true", help="jobs through the worker's round engine")
    parser.add_argument("--queue", action="store_true", help="jobs through a private cluster's worker and the SDK")
    parser.add_argument("--cache", action="store_true", help="with --engine or --queue: also cold and warm "
                        "vector-cache runs")
    parser.add_argument("--timeout", type=float, default=1800, help="with --queue: seconds to wait for one run")
    parser.add_argument("--jobs", type=int, default=4, help="with --engine: jobs per kind")
    parser.add_argument("--per-job", type=int, default=8, help="with --engine: inputs per job")
    parser.add_argument("--max-batch-tokens", type=int, default=32768)
    parser.add_argument("--max-batch-inputs", type=int, default=64)
    parser.add_argument("--repeat", type=int, default=3, help="runs of each way; the best counts")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args(argv)
    if args.engine and args.queue:
        parser.error("--engine or --queue, not both")
    if args.cache and not (args.engine or args.queue):
        parser.error("--cache: only with --engine or --queue")
    args.kinds = args.kinds or ("text,image,mixed" if args.engine or args.queue else "text,image,video,mixed")
    opts = LoadOptions(device=args.device, dtype=args.dtype)
    with tempfile.TemporaryDirectory() as tmp:
        spec = args.model
        if spec is None:
            from rerankq.models.qwen3vl_embed.tiny import write_tiny_embedding_model

            spec = str(write_tiny_embedding_model(Path(tmp) / "tiny-embedding"))
        if args.engine or args.queue:
            engine_report = engine_main(args, spec) if args.engine else queue_main(args, spec)
            if args.json:
                print(json.dumps(engine_report, indent=2))
            else:
                print_engine(engine_report)
            return 0
        embedder = load_embedder(spec, opts)
        rows = [bench_kind(embedder, kind, args.inputs, args.max_batch_tokens, args.max_batch_inputs, args.repeat)
                for kind in args.kinds.split(",")]
    report = {"model": embedder.name, "device": args.device, "dtype": str(embedder.dtype), "dims": embedder.hidden_size,
              "results": rows}
    if args.json:
        print(json.dumps(report, indent=2))
        return 0
    print(f"{embedder.name} on {args.device} ({report['dtype']}, {embedder.hidden_size} dims)")
    print(f"{'kind':<7}{'inputs':>7}{'tokens':>9}{'prepare/s':>11}{'1/pass /s':>11}{'batched /s':>12}"
          f"{'speed-up':>10}{'max |Δ|':>10}")
    for r in rows:
        print(f"{r['kind']:<7}{r['inputs']:>7}{r['tokens']:>9}{r['prepare_inputs_per_s']:>11.1f}"
              f"{r['one_per_pass_inputs_per_s']:>11.1f}{r['batched_inputs_per_s']:>12.1f}{r['speedup']:>9.2f}x"
              f"{r['max_abs_delta']:>10.1e}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
