"""Scorer-alone benchmark: one pair per forward pass (the official script's way) versus batched passes.

    python -m bench.scorer --model /path/to/tiny --kinds text,image,video
    python -m bench.scorer --model random:8b --device cuda --kinds text,image --pairs 64

Prints, per pair kind, pairs/s and ms per pair for both ways and the largest |Δ| between their scores.
``--json`` prints one JSON object instead. Preparation (tokenising, vision preprocessing) is timed apart.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections.abc import Callable
from typing import Any

import torch

from rerankq.cli.samples import mp4_bytes, noise_image
from rerankq.media.decode import decode_video
from rerankq.media.sides import ResolvedSide, VisionBudget
from rerankq.models.batching import score_all
from rerankq.models.loading import LoadOptions, load_model
from rerankq.models.qwen3vl.model import Scorer
from rerankq.models.qwen3vl.pairs import PreparedPair
from rerankq.models.qwen3vl.vision import image_input, video_input

INSTRUCTION = "Given a search query, retrieve relevant candidates that answer the query."
WORDS = ("lightweight", "trail", "backpack", "nylon", "side", "bottle", "pocket", "padded", "straps", "rain",
         "cover", "hiking")


def _text(n_words: int, seed: int) -> str:
    return " ".join(WORDS[(seed + i * 7) % len(WORDS)] for i in range(n_words))


def _side_factory(kind: str, text_tokens: int) -> Callable[[int], ResolvedSide]:
    budget = VisionBudget()
    if kind == "text":
        return lambda i: ResolvedSide(texts=[_text(text_tokens - 60, i)])  # ~60 tokens of prompt around it
    if kind == "image":  # one ~900-token image (960x960 px = 30x30 visual tokens)
        return lambda i: ResolvedSide(vision=[image_input(noise_image(960, 960, seed=i), budget)])
    if kind == "video":
        clip = decode_video(mp4_bytes(seconds=8.0, fps=10, width=320, height=240), budget.fps, budget.max_frames)
        item = video_input(clip.frames, clip.indices, clip.fps, budget)
        return lambda i: ResolvedSide(vision=[item], texts=[f"clip {i}"])
    raise ValueError(f"unknown pair kind {kind!r}: text, image or video")


def make_pairs(scorer: Scorer, kind: str, n: int, text_tokens: int = 512) -> tuple[list[PreparedPair], float]:
    """``n`` pairs of ``kind`` and the seconds spent preparing them."""
    make_doc = _side_factory(kind, text_tokens)
    query = ResolvedSide(texts=["a blue nylon backpack with a bottle pocket"])
    start = time.perf_counter()
    pairs = [scorer.prepare(INSTRUCTION, query, make_doc(i)) for i in range(n)]
    return pairs, time.perf_counter() - start


def _timed(fn: Callable[[], list[float]], device: str) -> tuple[list[float], float]:
    if device.startswith("cuda"):
        torch.cuda.synchronize()
    start = time.perf_counter()
    out = fn()
    if device.startswith("cuda"):
        torch.cuda.synchronize()
    return out, time.perf_counter() - start


def measure(scorer: Scorer, pairs: list[PreparedPair], max_tokens: int, max_pairs: int) -> dict[str, Any]:
    """Single-pair passes versus planned batches on the same pairs, after one warm-up pass of each."""
    device = str(scorer.device)
    scorer.forward(pairs[:1])
    lengths = [p.length for p in pairs]
    score_all(scorer.forward, pairs[:max_pairs], lengths[:max_pairs], max_tokens, max_pairs)
    single, t_single = _timed(lambda: [scorer.forward([p])[0] for p in pairs], device)
    batched, t_batched = _timed(lambda: score_all(scorer.forward, pairs, lengths, max_tokens, max_pairs), device)
    n = len(pairs)
    return {
        "pairs": n,
        "mean_tokens": sum(p.length for p in pairs) / n,
        "single_pairs_per_s": n / t_single,
        "single_ms_per_pair": 1000 * t_single / n,
        "batched_pairs_per_s": n / t_batched,
        "batched_ms_per_pair": 1000 * t_batched / n,
        "speedup": t_single / t_batched,
        "max_abs_delta": max(abs(a - b) for a, b in zip(single, batched, strict=True)),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", required=True, help="model SPEC (directory, s3://, random:2b|8b|tiny)")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--dtype", default="auto")
    parser.add_argument("--kinds", default="text,image,video")
    parser.add_argument("--pairs", type=int, default=32)
    parser.add_argument("--text-tokens", type=int, default=512)
    parser.add_argument("--max-tokens", type=int, default=32768)
    parser.add_argument("--max-pairs", type=int, default=64)
    parser.add_argument("--jobs", default=None, metavar="SHAPE:DOCS,...",
                        help="shared-prefix job shapes instead of --kinds: image-query, text-query, image-docs, "
                             "video-query (e.g. image-query:16,text-query:16,image-docs:8)")
    parser.add_argument("--repeats", type=int, default=3, help="best of N (--jobs)")
    parser.add_argument("--peak-tflops", type=float, default=None, help="for MFU (--jobs; CUDA default 989)")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args(argv)
    start = time.perf_counter()
    scorer = load_model(args.model, LoadOptions(device=args.device, dtype=args.dtype))
    if not isinstance(scorer, Scorer):
        raise SystemExit(f"the scorer benchmark builds Qwen3-VL pairs; {args.model!r} is {scorer.name}")
    report: dict[str, Any] = {"model": scorer.name, "device": args.device, "dtype": str(scorer.dtype),
                              "load_s": time.perf_counter() - start, "kinds": {}}
    if args.device.startswith("cuda"):
        report["gpu"] = torch.cuda.get_device_name()
    if args.jobs:
        return _jobs(scorer, report, args)
    for kind in args.kinds.split(","):
        pairs, prep_s = make_pairs(scorer, kind, args.pairs, args.text_tokens)
        result = measure(scorer, pairs, args.max_tokens, args.max_pairs)
        result["prepare_ms_per_pair"] = 1000 * prep_s / len(pairs)
        report["kinds"][kind] = result
    if args.json:
        print(json.dumps(report))
        return 0
    print(f"model {report['model']} on {report.get('gpu', args.device)} ({report['dtype']}), "
          f"loaded in {report['load_s']:.1f} s")
    print(f"{'kind':6} {'pairs':>5} {'tokens':>7} {'1/pass pairs/s':>15} {'batched pairs/s':>16} "
          f"{'speedup':>8} {'ms/pair 1 vs B':>17} {'prep ms/pair':>13} {'max |Δ|':>9}")
    for kind, r in report["kinds"].items():
        print(f"{kind:6} {r['pairs']:5d} {r['mean_tokens']:7.0f} {r['single_pairs_per_s']:15.2f} "
              f"{r['batched_pairs_per_s']:16.2f} {r['speedup']:7.2f}x "
              f"{r['single_ms_per_pair']:8.2f} / {r['batched_ms_per_pair']:6.2f} "
              f"{r['prepare_ms_per_pair']:13.2f} {r['max_abs_delta']:9.2e}")
    return 0


def _jobs(scorer: Scorer, report: dict[str, Any], args: argparse.Namespace) -> int:
    from bench import sharing as sharing_bench

    peak = args.peak_tflops or (989.0 if args.device.startswith("cuda") else None)
    report["jobs"] = [sharing_bench.measure_job(scorer, shape, docs, _text, args.max_tokens, args.max_pairs,
                                                args.repeats) for shape, docs in sharing_bench.parse_jobs(args.jobs)]
    if args.json:
        print(json.dumps(report))
        return 0
    print(f"model {report['model']} on {report.get('gpu', args.device)} ({report['dtype']}), "
          f"{torch.get_num_threads()} threads, best of {args.repeats}")
    print(sharing_bench.render(report["jobs"], peak))
    return 0


if __name__ == "__main__":
    sys.exit(main())
