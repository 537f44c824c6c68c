"""Shared-prefix scoring, measured (``python -m bench.scorer --jobs ...``): each job shape scored three
ways on the same pairs in the same run, after a warm-up of each:

- **shared**: the job's prefix computed once (when the planner says it pays), suffixes batched;
- **off**: sharing off, batched as the worker batches without it (the baseline);
- **1/pass**: one pair per forward pass, the official script's way.

shared and off (and forced, below) run in turn within each of ``--repeats`` rounds, best of each, so that a
machine busy with other work slows them alike; a job the planner declines runs the same passes shared or
off, so their ratio there shows the noise of the run.

Prints pairs/s of each, the speed-ups, and the largest |Δ logit| of shared and off against one pair per
pass. A job the planner declines to share also shows what forced sharing would have given. With
``--peak-tflops`` (or on CUDA), MFU from a FLOP model: 2 x parameters per token computed (the vision tower's
per visual token), attention left out, so a lower bound.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

import torch

from rerankq.media.sides import ResolvedSide, VisionBudget
from rerankq.models.batching import plan_with_prefixes
from rerankq.models.contract import prefix_marks
from rerankq.models.qwen3vl.model import Scorer
from rerankq.models.qwen3vl.pairs import PreparedPair
from rerankq.models.qwen3vl.sharing import attach_prefix
from rerankq.models.qwen3vl.vision import image_input, video_input

INSTRUCTION = "Given a search query, retrieve relevant candidates that answer the query."
SHAPES = {
    "image-query": "image query (1024 visual tokens) x text documents (~100 tokens)",
    "text-query": "text query (~100 tokens) x text documents (~100 tokens)",
    "image-docs": "short text query x image documents (~900 visual tokens)",
    "video-query": "video query (8 s clip) x text documents (~100 tokens)",
}


def job_sides(shape: str, docs: int, words: Callable[[int, int], str]) -> tuple[ResolvedSide, list[ResolvedSide]]:
    """The query and documents of one job of ``shape`` (see ``SHAPES``)."""
    from rerankq.cli.samples import mp4_bytes, noise_image

    budget = VisionBudget()
    text_docs = [ResolvedSide(texts=[words(95, i)]) for i in range(docs)]
    if shape == "image-query":  # 1024 x 1024 px: 32 x 32 visual tokens
        image = image_input(noise_image(1024, 1024, seed=1), budget)
        return ResolvedSide(vision=[image], texts=["red shoes"]), text_docs
    if shape == "text-query":
        return ResolvedSide(texts=[words(100, 99)]), text_docs
    if shape == "image-docs":  # 960 x 960 px: 900 visual tokens each
        return ResolvedSide(texts=["red shoes"]), [ResolvedSide(vision=[image_input(noise_image(960, 960, seed=i),
                                                                                    budget)]) for i in range(docs)]
    if shape == "video-query":
        from rerankq.media.decode import decode_video

        clip = decode_video(mp4_bytes(seconds=8.0, fps=10, width=320, height=240), budget.fps, budget.max_frames)
        video = video_input(clip.frames, clip.indices, clip.fps, budget)
        return ResolvedSide(vision=[video], texts=["a clip"]), text_docs
    raise SystemExit(f"unknown job shape {shape!r}: {', '.join(SHAPES)}")


def parse_jobs(text: str) -> list[tuple[str, int]]:
    """``image-query:16,text-query:16`` → [(shape, documents), ...]."""
    out = []
    for item in text.split(","):
        shape, _, docs = item.partition(":")
        out.append((shape, int(docs or 16)))
    return out


def logits_all(scorer: Scorer, pairs: list[PreparedPair], max_tokens: int, max_pairs: int) -> torch.Tensor:
    """Logits of every pair, batched as the worker plans them (suffixes of a shared prefix included)."""
    out = torch.zeros(len(pairs))
    for group in plan_with_prefixes([p.length for p in pairs], prefix_marks(pairs), max_tokens, max_pairs):
        out[group] = scorer.logits([pairs[i] for i in group]).cpu()
    return out


def _sync(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def _timed(make: Callable[[], list[PreparedPair]], run: Callable[[list[PreparedPair]], torch.Tensor],
           device: str) -> tuple[float, torch.Tensor]:
    """One run on freshly prepared pairs (a shared prefix is freed after its job), preparation not timed."""
    pairs = make()
    _sync(device)
    start = time.perf_counter()
    out = run(pairs)
    _sync(device)
    return time.perf_counter() - start, out


def _interleaved(variants: dict[str, tuple[Any, Any]], device: str, repeats: int
                 ) -> dict[str, tuple[float, torch.Tensor]]:
    """Best time of each variant over ``repeats`` rounds that run every variant in turn, so that a machine
    busy with other work slows them alike."""
    best: dict[str, tuple[float, torch.Tensor]] = {}
    for _ in range(repeats):
        for name, (make, run) in variants.items():
            seconds, out = _timed(make, run, device)
            if name not in best or seconds < best[name][0]:
                best[name] = (seconds, out)
    return best


def measure_job(scorer: Scorer, shape: str, docs: int, words: Callable[[int, int], str], max_tokens: int,
                max_pairs: int, repeats: int) -> dict[str, Any]:
    query, documents = job_sides(shape, docs, words)
    device = str(scorer.device)

    def plain() -> list[PreparedPair]:
        return [scorer.prepare(INSTRUCTION, query, d) for d in documents]

    def shared(force: bool = False) -> list[PreparedPair]:
        pairs = plain()
        attach_prefix(pairs, lambda *_: True) if force else scorer.share_prefix(pairs)
        return pairs

    def batched(pairs: list[PreparedPair]) -> torch.Tensor:
        return logits_all(scorer, pairs, max_tokens, max_pairs)

    decided = shared()
    prefix = decided[0].prefix
    for make in (plain, shared):  # warm-up
        batched(make()[: min(docs, 4)])
    variants = {"shared": (shared, batched), "off": (plain, batched)}
    if prefix is None:  # what sharing would have done, had the planner not declined it
        variants["forced"] = (lambda: shared(force=True), batched)
    best = _interleaved(variants, device, repeats)
    (t_on, on), (t_off, off) = best["shared"], best["off"]
    t_one, one = _timed(plain, lambda ps: torch.cat([scorer.logits([p]).cpu() for p in ps]), device)
    row = {"shape": shape, "documents": docs, "tokens_per_pair": sum(p.length for p in decided) / docs,
           "prefix_tokens": prefix.length if prefix else 0, "shared": prefix is not None,
           "shared_pairs_per_s": docs / t_on, "off_pairs_per_s": docs / t_off, "one_pass_pairs_per_s": docs / t_one,
           "shared_vs_off": t_off / t_on, "shared_vs_one_pass": t_one / t_on,
           "max_dlogit_shared": float((on - one).abs().max()), "max_dlogit_off": float((off - one).abs().max()),
           "gflop_shared": gflop(scorer, decided), "gflop_off": gflop(scorer, plain())}
    if "forced" in best:
        row["forced_pairs_per_s"], row["forced_vs_off"] = docs / best["forced"][0], t_off / best["forced"][0]
    return row


def gflop(scorer: Scorer, pairs: list[PreparedPair]) -> float:
    """FLOP model of the work a plan executes: each prefix once, then each pair's own tokens."""
    backbone: Any = scorer.backbone
    text = sum(p.numel() for n, p in backbone.language_model.named_parameters() if "embed" not in n)
    vision = sum(p.numel() for p in backbone.visual.parameters())
    prefixes = {id(p.prefix): p.prefix for p in pairs if p.prefix is not None}
    tokens = sum(h.length for h in prefixes.values()) + sum(p.length - (p.prefix.length if p.prefix else 0)
                                                            for p in pairs)
    visual = sum(v.num_tokens for h in prefixes.values() for v in h.vision)
    visual += sum(v.num_tokens for p in pairs for v in p.vision[len(p.prefix.vision) if p.prefix else 0:])
    return (2 * text * tokens + 2 * vision * 4 * visual) / 1e9  # 4 patches per merged visual token


def render(rows: list[dict[str, Any]], peak_tflops: float | None) -> str:
    header = (f"{'job':12} {'docs':>4} {'tok/pair':>8} {'prefix':>6} {'1/pass':>8} {'off':>8} {'shared':>8} "
              f"{'shared/off':>10} {'shared/1pass':>12} {'max|Δlogit|':>11}")
    lines = [header + ("  MFU off/shared" if peak_tflops else "")]
    for r in rows:
        note = "" if r["shared"] else (f"  planner declined; forced: {r['forced_pairs_per_s']:.2f} pairs/s "
                                       f"({r['forced_vs_off']:.2f}x)")
        mfu = ""
        if peak_tflops:
            mfu = (f"  {100 * r['gflop_off'] * r['off_pairs_per_s'] / r['documents'] / peak_tflops / 1e3:.1f}% / "
                   f"{100 * r['gflop_shared'] * r['shared_pairs_per_s'] / r['documents'] / peak_tflops / 1e3:.1f}%")
        lines.append(f"{r['shape']:12} {r['documents']:4d} {r['tokens_per_pair']:8.0f} {r['prefix_tokens']:6d} "
                     f"{r['one_pass_pairs_per_s']:8.2f} {r['off_pairs_per_s']:8.2f} {r['shared_pairs_per_s']:8.2f} "
                     f"{r['shared_vs_off']:9.2f}x {r['shared_vs_one_pass']:11.2f}x "
                     f"{max(r['max_dlogit_shared'], r['max_dlogit_off']):11.1e}{mfu}{note}")
    lines.append("pairs/s; off = sharing off, batched as before; 1/pass = one pair per forward pass (official)")
    return "\n".join(lines)
