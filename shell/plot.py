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


def throughput_series(samples: Sequence[Sample], points: int = 60) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Pairs/s and jobs/s over time, from the cumulative counts on a regular grid of ``points`` steps.

    Returns (grid midpoints, pairs/s, jobs/s); empty arrays when the run spans no time."""
    t = np.array([float(s["t"]) for s in samples])
    pairs = np.maximum.accumulate(np.array([float(s["pairs_done"]) for s in samples]))
    jobs = np.maximum.accumulate(np.array([float(s["jobs_done"]) for s in samples]))
    start, end = 0.0, float(t.max())
    if end <= start:
        return np.array([]), np.array([]), np.array([])
    grid = np.linspace(start, end, max(2, min(points, len(samples) + 1)))
    # Counts before the first sample are 0 at t = 0: the run starts empty.
    t0, p0, j0 = np.concatenate([[0.0], t]), np.concatenate([[0.0], pairs]), np.concatenate([[0.0], jobs])
    dt = np.diff(grid)
    pairs_rate = np.diff(np.interp(grid, t0, p0)) / dt
    jobs_rate = np.diff(np.interp(grid, t0, j0)) / dt
    return (grid[:-1] + grid[1:]) / 2, pairs_rate, jobs_rate


def rolling_quantiles(t: np.ndarray, latency: np.ndarray, window: int) -> tuple[np.ndarray, np.ndarray]:
    """p50 and p95 of the last ``window`` latencies at each point (fewer at the start)."""
    p50 = np.array([np.quantile(latency[max(0, i - window + 1):i + 1], 0.5) for i in range(len(t))])
    p95 = np.array([np.quantile(latency[max(0, i - window + 1):i + 1], 0.95) for i in range(len(t))])
    return p50, p95


def plot_bench(samples: Sequence[Sample], path: str | Path, title: str | None = None) -> Path:
    """Write a PNG with two panels, throughput (pairs/s and jobs/s) and job latency (each job, rolling
    p50 / p95), over the run; returns the path. ``ValueError`` when ``samples`` is empty."""
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
    _draw_throughput(top, ordered)
    _draw_latency(bottom, ordered)
    bottom.set_xlabel("time since start (s)")
    last = ordered[-1]
    span = float(last["t"]) or float("nan")
    fig.suptitle(title or f"rerankq bench: {int(last['pairs_done'])} pairs, {int(last['jobs_done'])} jobs in "
                 f"{span:.1f} s ({last['pairs_done'] / span:.1f} pairs/s)")
    out = Path(path)
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, format="png")
    return out


def _draw_throughput(ax: Any, samples: Sequence[Sample]) -> None:
    mid, pairs_rate, jobs_rate = throughput_series(samples)
    ax.plot(mid, pairs_rate, color="tab:blue", label="pairs/s")
    ax.set_ylabel("pairs / s", color="tab:blue")
    ax.set_ylim(bottom=0)
    jobs_ax = ax.twinx()
    jobs_ax.plot(mid, jobs_rate, color="tab:orange", linestyle="--", label="jobs/s")
    jobs_ax.set_ylabel("jobs / s", color="tab:orange")
    jobs_ax.set_ylim(bottom=0)
    ax.set_title("throughput")
    ax.grid(True, alpha=0.3)
    handles = ax.get_lines() + jobs_ax.get_lines()
    ax.legend(handles, [h.get_label() for h in handles], loc="upper right")


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
