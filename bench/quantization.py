"""Quantized against full precision, same model, one run: memory, speed and agreement of scores.

    rerankq bench --quantization int8,int4,bnb-8bit,bnb-nf4 --model random:small
    python -m bench.quantization --model random:8b --device cuda --modes int8,int4,fp8,bnb-nf4

For the reference (``none``: fp32 on CPU, bf16 on CUDA unless ``--dtype``) and each mode, a fresh process
loads the model and scores one fixed workload (``--jobs`` jobs of ``--docs`` documents: text and image queries,
text and image documents, every fourth document an image). Each process reports:

- weights: bytes the parameters and buffers really occupy (``rerankq.models.quantization.weights_bytes``:
  quantized tensors counted by the tensors inside them), and on CUDA ``torch.cuda.memory_allocated`` after load;
  linears: the part of them in the language model's linear layers, the part a mode quantizes (the embeddings,
  norms and the vision tower stay as they are);
- peak: the process's resident high-water mark (``VmHWM``) on CPU, ``torch.cuda.max_memory_allocated`` on CUDA;
- pairs/s over the workload's planned batches, best of ``--repeats`` after a warm-up;

and the parent compares each mode's scores with the reference's: Spearman's rho per job (mean and min), top-10
overlap per job (mean), max and mean |Δ score|. A mode this machine cannot run is listed with its one-line
reason. Random weights (``random:SIZE``, the tiny model) are harsher than trained ones: their scores crowd
near one value, so rank agreement there understates what a trained checkpoint keeps.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from typing import Any

MODES = ("int8", "int4", "bnb-8bit", "bnb-nf4", "fp8")
INSTRUCTION = "Given a search query, retrieve relevant candidates that answer the query."
WORDS = ("lightweight", "trail", "backpack", "nylon", "side", "bottle", "pocket", "padded", "straps", "rain",
         "cover", "hiking", "city", "leather", "camera", "winter", "charger", "boot", "jacket", "travel")


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--model", default="random:small", help="model SPEC (default random:small)")
    p.add_argument("--device", default="cpu")
    p.add_argument("--dtype", default="auto", help="the reference's and the modes' activations (auto: fp32 CPU, "
                   "bf16 CUDA)")
    p.add_argument("--modes", default=",".join(MODES), help=f"comma-separated (default {','.join(MODES)})")
    p.add_argument("--jobs", type=int, default=6)
    p.add_argument("--docs", type=int, default=16, help="documents per job (>= 10 for the top-10 overlap)")
    p.add_argument("--words", type=int, default=48, help="words per text document")
    p.add_argument("--repeats", type=int, default=2)
    p.add_argument("--max-tokens", type=int, default=16384)
    p.add_argument("--max-pairs", type=int, default=32)
    p.add_argument("--json", action="store_true", help="print one JSON object")
    p.add_argument("--child", default=None, help=argparse.SUPPRESS)


def _status_kib(field: str) -> int:
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    return 0


def _workload(scorer: Any, args: argparse.Namespace) -> list[list[Any]]:
    from rerankq.cli.samples import noise_image
    from rerankq.media.sides import ResolvedSide, VisionBudget
    from rerankq.models.qwen3vl.vision import image_input

    budget = VisionBudget()

    def text(seed: int, n: int) -> ResolvedSide:
        return ResolvedSide(texts=[" ".join(WORDS[(seed * 7 + i * (seed % 5 + 1)) % len(WORDS)] for i in range(n))])

    def image(seed: int) -> ResolvedSide:  # 256x256 px: 8x8 = 64 visual tokens
        return ResolvedSide(vision=[image_input(noise_image(256, 256, seed=seed), budget)])

    jobs = []
    for j in range(args.jobs):
        query = image(1000 + j) if j % 3 == 2 else text(j, 8)
        docs = [image(100 * j + d) if d % 4 == 3 else text(100 * j + d, args.words) for d in range(args.docs)]
        jobs.append([scorer.prepare(INSTRUCTION, query, doc) for doc in docs])
    return jobs


def child(args: argparse.Namespace) -> dict[str, Any]:
    """Load with one mode and score the workload (runs in a process of its own: clean peaks)."""
    import torch

    from rerankq.models.batching import score_all
    from rerankq.models.loading import LoadOptions, load_model
    from rerankq.models.quantization import is_vision, weights_bytes

    cuda = args.device.startswith("cuda")
    rss0, start = _status_kib("VmRSS"), time.perf_counter()
    scorer: Any = load_model(args.model, LoadOptions(device=args.device, dtype=args.dtype, quantization=args.child,
                                                     share_prefix=False))
    load_s = time.perf_counter() - start
    out: dict[str, Any] = {"mode": args.child, "name": scorer.name, "dtype": str(scorer.dtype), "load_s": load_s,
                           "weights_bytes": weights_bytes(scorer.backbone, scorer.head),
                           "linear_bytes": sum(weights_bytes(m) for n, m in scorer.backbone.named_modules()
                                               if isinstance(m, torch.nn.Linear) and not is_vision(n)),
                           "rss_load_bytes": (_status_kib("VmRSS") - rss0) * 1024}
    if cuda:
        out["cuda_allocated_bytes"] = torch.cuda.memory_allocated()
        torch.cuda.reset_peak_memory_stats()
    jobs = _workload(scorer, args)
    pairs = [p for job in jobs for p in job]
    lengths = [p.length for p in pairs]
    scorer.forward(pairs[:2])  # warm-up
    best, scores = float("inf"), []
    for _ in range(max(args.repeats, 1)):
        if cuda:
            torch.cuda.synchronize()
        t0 = time.perf_counter()
        scores = score_all(scorer.forward, pairs, lengths, args.max_tokens, args.max_pairs)
        if cuda:
            torch.cuda.synchronize()
        best = min(best, time.perf_counter() - t0)
    out.update(pairs=len(pairs), tokens=sum(lengths), pairs_per_s=len(pairs) / best,
               peak_bytes=torch.cuda.max_memory_allocated() if cuda else _status_kib("VmHWM") * 1024,
               scores=[scores[i * args.docs:(i + 1) * args.docs] for i in range(len(jobs))])
    return out


def _ranks(values: list[float]) -> list[float]:
    order = sorted(range(len(values)), key=values.__getitem__)
    ranks = [0.0] * len(values)
    i = 0
    while i < len(order):  # ties share their mean rank
        j = i
        while j + 1 < len(order) and values[order[j + 1]] == values[order[i]]:
            j += 1
        for k in range(i, j + 1):
            ranks[order[k]] = (i + j) / 2
        i = j + 1
    return ranks


def spearman(a: list[float], b: list[float]) -> float:
    """Spearman's rho (Pearson's r of the ranks; 1.0 when either side is constant and the other too)."""
    ra, rb = _ranks(a), _ranks(b)
    ma, mb = sum(ra) / len(ra), sum(rb) / len(rb)
    cov = sum((x - ma) * (y - mb) for x, y in zip(ra, rb, strict=True))
    var = (sum((x - ma) ** 2 for x in ra) * sum((y - mb) ** 2 for y in rb)) ** 0.5
    return cov / var if var else float(ra == rb)


def top_overlap(a: list[float], b: list[float], k: int = 10) -> float:
    """Share of the reference's top ``k`` documents that are also in the other's top ``k``."""
    k = min(k, len(a))
    top = lambda s: set(sorted(range(len(s)), key=lambda i: -s[i])[:k])  # noqa: E731
    return len(top(a) & top(b)) / k


def agreement(ref: list[list[float]], got: list[list[float]]) -> dict[str, float]:
    """Spearman per job (mean, min), top-10 overlap (mean), max and mean |Δ score| over all pairs."""
    rhos = [spearman(a, b) for a, b in zip(ref, got, strict=True)]
    deltas = [abs(x - y) for a, b in zip(ref, got, strict=True) for x, y in zip(a, b, strict=True)]
    return {"spearman_mean": sum(rhos) / len(rhos), "spearman_min": min(rhos),
            "top10_overlap": sum(top_overlap(a, b) for a, b in zip(ref, got, strict=True)) / len(ref),
            "max_abs_delta": max(deltas), "mean_abs_delta": sum(deltas) / len(deltas)}


def _run_child(mode: str, argv: list[str]) -> dict[str, Any]:
    proc = subprocess.run([sys.executable, "-m", "bench.quantization", *argv, "--child", mode, "--json"],
                          capture_output=True, text=True, env={**os.environ, "TQDM_DISABLE": "1"})
    lines = proc.stdout.strip().splitlines()
    if proc.returncode == 0 and lines:
        result: dict[str, Any] = json.loads(lines[-1])
        return result
    tail = (proc.stderr.strip().splitlines() or ["(no output)"])[-1]
    return {"mode": mode, "error": tail}


def run(args: argparse.Namespace) -> dict[str, Any]:
    argv = ["--model", args.model, "--device", args.device, "--dtype", args.dtype, "--jobs", str(args.jobs),
            "--docs", str(args.docs), "--words", str(args.words), "--repeats", str(args.repeats),
            "--max-tokens", str(args.max_tokens), "--max-pairs", str(args.max_pairs)]
    ref = _run_child("none", argv)
    if "error" in ref:
        raise SystemExit(f"the full-precision reference failed: {ref['error']}")
    rows = [ref]
    for mode in [m.strip() for m in args.modes.split(",") if m.strip() and m.strip() != "none"]:
        row = _run_child(mode, argv)
        if "scores" in row:
            row["agreement"] = agreement(ref["scores"], row["scores"])
        rows.append(row)
    return {"model": args.model, "device": args.device, "jobs": args.jobs, "docs": args.docs, "rows": rows}


def render(report: dict[str, Any]) -> str:
    mib = 1 / 2**20
    ref = report["rows"][0]
    lines = [f"{ref['name']} on {report['device']} ({ref['dtype']}), {report['jobs']} jobs x {report['docs']} "
             f"documents ({ref['pairs']} pairs, {ref['tokens']} tokens; text and image queries and documents)",
             f"{'mode':9} {'weights MiB':>11} {'linears MiB':>11} {'peak MiB':>9} {'pairs/s':>8} {'rho mean':>8} "
             f"{'rho min':>8} {'top-10':>7} {'max|Δ|':>8} {'mean|Δ|':>8}"]
    for row in report["rows"]:
        if "error" in row:
            lines.append(f"{row['mode']:9} unavailable: {row['error']}")
            continue
        a = row.get("agreement")
        agree = (f"{a['spearman_mean']:8.3f} {a['spearman_min']:8.3f} {a['top10_overlap']:7.2f} "
                 f"{a['max_abs_delta']:8.4f} {a['mean_abs_delta']:8.4f}" if a else f"{'(reference)':>44}")
        lines.append(f"{row['mode']:9} {row['weights_bytes'] * mib:11.1f} {row['linear_bytes'] * mib:11.1f} "
                     f"{row['peak_bytes'] * mib:9.1f} "
                     f"{row['pairs_per_s']:8.2f} {agree}")
    return "\n".join(lines)


def main(argv: list[str] | None = None, prog: str | None = None) -> int:
    parser = argparse.ArgumentParser(prog=prog, description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    add_arguments(parser)
    args = parser.parse_args(argv)
    if args.child:
        from rerankq.errors import RerankqError

        try:
            print(json.dumps(child(args)))
        except RerankqError as exc:  # a mode this machine cannot run: its one line
            print(exc, file=sys.stderr)
            return 4
        return 0
    report = run(args)
    for row in report["rows"]:
        row.pop("scores", None)
    print(json.dumps(report) if args.json else render(report))
    return 0


if __name__ == "__main__":
    sys.exit(main())
