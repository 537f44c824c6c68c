"""Embedding-alone benchmark: one input per forward pass (the official script's way, one call per input)
versus many inputs per pass under the token budget.

    python -m bench.embedding                                   # the tiny checkpoint, built in a temp dir
    python -m bench.embedding --model /path/to/checkpoint --kinds text,image
    python -m bench.embedding --model random:embed-2b --device cuda --inputs 128

Prints, per input kind, inputs/s for both ways, the speed-up and the largest |Δ| between their vectors.
``--json`` prints one JSON object instead. Preparation (tokenising, vision preprocessing) is timed apart.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from collections.abc import Callable
from typing import Any, TypeVar

import numpy as np

from rerankq.cli.samples import mp4_bytes, noise_image
from rerankq.media.decode import decode_video
from rerankq.media.sides import ResolvedSide, VisionBudget
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


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.embedding", description=__doc__.split("\n")[0])
    parser.add_argument("--model", default=None, help="checkpoint dir or random:embed-2b|8b|small|tiny "
                        "(default: the tiny checkpoint, built in a temp dir)")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--dtype", default="auto")
    parser.add_argument("--kinds", default="text,image,video,mixed")
    parser.add_argument("--inputs", type=int, default=32, help="inputs per kind")
    parser.add_argument("--max-batch-tokens", type=int, default=32768)
    parser.add_argument("--max-batch-inputs", type=int, default=64)
    parser.add_argument("--repeat", type=int, default=3, help="runs of each way; the best counts")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args(argv)
    opts = LoadOptions(device=args.device, dtype=args.dtype)
    with tempfile.TemporaryDirectory() as tmp:
        spec = args.model
        if spec is None:
            from rerankq.models.qwen3vl_embed.tiny import write_tiny_embedding_model

            spec = str(write_tiny_embedding_model(tmp))
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
