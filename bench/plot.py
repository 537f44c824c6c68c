"""``rerankq bench --plot out.png``: throughput and latency over a benchmark run, as one PNG.

Input is the run's time series: one dict per sample with ``t`` (seconds since the run started),
``pairs_done`` and ``jobs_done`` (cumulative counts at ``t``) and ``latency`` (seconds, the latency of a job
that finished at ``t``; None for samples that are only progress readings). One sample per finished job
works, and so do periodic progress samples, or a mix.

Uses matplotlib's object API with the Agg canvas: no display, no global pyplot state.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

Sample = Mapping[str, Any]


def throughput_series(samples: Sequence[Sample], points: int = 200, window: float | None = None
                      ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Pairs/s and jobs/s over time: the slope of the cumulative counts, smoothed over about ``window``
    seconds (default a fifteenth of the run), on a grid of ``points``. Jobs finish in bursts (a round at a
    time), so a narrow window shows the bursts, not the rate.

    Returns (grid, pairs/s, jobs/s); empty arrays when the run spans no time."""
    t = np.array([float(s["t"]) for s in samples])
    pairs = np.maximum.accumulate(np.array([float(s["pairs_done"]) for s in samples]))
    jobs = np.maximum.accumulate(np.array([float(s["jobs_done"]) for s in samples]))
    end = float(t.max())
    if end <= 0.0:
        return np.array([]), np.array([]), np.array([])
    width = window or end / 15
    # Counts before the first sample are 0 at t = 0: the run starts empty.
    t0, p0, j0 = np.concatenate([[0.0], t]), np.concatenate([[0.0], pairs]), np.concatenate([[0.0], jobs])
    grid = np.linspace(0.0, end, max(2, points))

    def rate(counts: np.ndarray) -> np.ndarray:
        # A boxcar slid across itself (a triangular kernel): bursts a window apart no longer alias.
        out = np.zeros_like(grid)
        shifts = np.linspace(-width / 2, width / 2, 9)
        for shift in shifts:
            lo, hi = np.clip(grid + shift - width / 2, 0.0, end), np.clip(grid + shift + width / 2, 0.0, end)
            out += (np.interp(hi, t0, counts) - np.interp(lo, t0, counts)) / np.maximum(hi - lo, 1e-9)
        return out / len(shifts)

    return grid, rate(p0), rate(j0)


def rolling_quantiles(t: np.ndarray, latency: np.ndarray, window: int) -> tuple[np.ndarray, np.ndarray]:
    """p50 and p95 of the last ``window`` latencies at each point (fewer at the start)."""
    p50 = np.array([np.quantile(latency[max(0, i - window + 1):i + 1], 0.5) for i in range(len(t))])
    p95 = np.array([np.quantile(latency[max(0, i - window + 1):i + 1], 0.95) for i in range(len(t))])
    return p50, p95


def plot_bench(samples: Sequence[Sample], path: str | Path, title: str | None = None,
               workloads: Sequence[Mapping[str, Any]] = ()) -> Path:
    """Write a PNG with two panels, throughput (pairs/s and jobs/s, smoothed) and job latency (each job,
    rolling p50 / p95), over the run; returns the path. ``workloads`` mark spans of the run: dicts with
    ``name``, ``start`` and ``end`` (seconds) and, optionally, ``scorer_pairs_per_s`` (drawn as that span's
    ceiling). ``ValueError`` when ``samples`` is empty."""
    if not samples:
        raise ValueError("plot_bench: no samples to plot")
    try:
        from matplotlib.backends.backend_agg import FigureCanvasAgg
        from matplotlib.figure import Figure
    except ImportError as exc:
        raise ImportError("rerankq bench --plot needs matplotlib: pip install matplotlib") from exc

    ordered = sorted(samples, key=lambda s: float(s["t"]))
    fig = Figure(figsize=(10, 7), dpi=100, layout="constrained")
    FigureCanvasAgg(fig)
    top, bottom = fig.subplots(2, 1, sharex=True)
    _draw_throughput(top, ordered, workloads)
    _draw_latency(bottom, ordered)
    for ax in (top, bottom):
        _mark_workloads(ax, workloads, label=ax is top)
    bottom.set_xlabel("time since start (s)")
    last = ordered[-1]
    span = float(last["t"]) or float("nan")
    fig.suptitle(title or f"rerankq bench: {int(last['pairs_done'])} pairs, {int(last['jobs_done'])} jobs in "
                 f"{span:.1f} s ({last['pairs_done'] / span:.1f} pairs/s)")
    out = Path(path)
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, format="png")
    return out


def _mark_workloads(ax: Any, workloads: Sequence[Mapping[str, Any]], label: bool) -> None:
    """Alternate shading per workload, a line where each starts, its name on the top panel."""
    for k, w in enumerate(workloads):
        ax.axvspan(w["start"], w["end"], color="tab:gray" if k % 2 else "tab:olive", alpha=0.08, lw=0)
        ax.axvline(w["start"], color="tab:gray", lw=0.8, ls=":")
        if label:
            ax.text((w["start"] + w["end"]) / 2, 0.98, w["name"], transform=ax.get_xaxis_transform(),
                    ha="center", va="top", fontsize=8, color="dimgray")


def _draw_throughput(ax: Any, samples: Sequence[Sample], workloads: Sequence[Mapping[str, Any]]) -> None:
    grid, pairs_rate, jobs_rate = throughput_series(samples)
    ax.plot(grid, pairs_rate, color="tab:blue", lw=2, label="pairs/s end to end (smoothed)")
    for k, w in enumerate(workloads):
        if w.get("scorer_pairs_per_s"):
            ax.hlines(w["scorer_pairs_per_s"], w["start"], w["end"], colors="tab:purple", linestyles="-.",
                      label="pairs/s scorer alone (replayed batches)" if k == 0 else None)
    ax.set_ylabel("pairs / s", color="tab:blue")
    ax.set_ylim(bottom=0, top=max([1.0, *pairs_rate, *(w.get("scorer_pairs_per_s") or 0 for w in workloads)])
                * 1.25)
    jobs_ax = ax.twinx()
    jobs_ax.plot(grid, jobs_rate, color="tab:orange", lw=1.2, ls="--", label="jobs/s (right axis)")
    jobs_ax.set_ylabel("jobs / s", color="tab:orange")
    jobs_ax.set_ylim(bottom=0, top=max(1.0, *jobs_rate) * 2.2)  # its line runs below the pairs/s line
    ax.grid(True, alpha=0.3)
    handles = [*ax.get_legend_handles_labels()[0], *jobs_ax.get_legend_handles_labels()[0]]
    ax.legend(handles, [h.get_label() for h in handles], loc="lower center", bbox_to_anchor=(0.5, 1.0), ncols=3,
              fontsize=8, frameon=False)  # above the panel: it never hides a line


def _draw_latency(ax: Any, samples: Sequence[Sample]) -> None:
    points = [(float(s["t"]), float(s["latency"])) for s in samples if s.get("latency") is not None]
    ax.set_title("job latency (submit to result)")
    ax.set_ylabel("seconds")
    ax.grid(True, alpha=0.3)
    if not points:
        ax.text(0.5, 0.5, "no latency samples", transform=ax.transAxes, ha="center", va="center")
        return
    t, latency = np.array(points).T
    ax.scatter(t, latency, s=8, alpha=0.4, color="tab:gray", label="each job")
    p50, p95 = rolling_quantiles(t, latency, window=max(5, len(t) // 20))
    ax.plot(t, p50, color="tab:green", label="p50 (rolling)")
    ax.plot(t, p95, color="tab:red", label="p95 (rolling)")
    ax.set_ylim(bottom=0)
    ax.legend(loc="upper left")
