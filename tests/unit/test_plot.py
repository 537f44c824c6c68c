"""``bench.plot.plot_bench``: the PNG behind ``rerankq bench --plot``."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from bench.plot import plot_bench, throughput_series


def run_samples(jobs: int = 200, pairs_per_job: int = 8) -> list[dict[str, float | None]]:
    """One sample per finished job at a steady 100 pairs/s, plus progress readings without latency."""
    samples: list[dict[str, float | None]] = []
    for i in range(1, jobs + 1):
        t = i * pairs_per_job / 100
        samples.append({"t": t, "pairs_done": i * pairs_per_job, "jobs_done": i, "latency": 0.2 + 0.01 * (i % 7)})
        samples.append({"t": t + 0.01, "pairs_done": i * pairs_per_job, "jobs_done": i, "latency": None})
    return samples


def test_writes_a_valid_png(tmp_path: Path) -> None:
    out = plot_bench(run_samples(), tmp_path / "plots" / "bench.png")
    assert out == tmp_path / "plots" / "bench.png"
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    with Image.open(out) as image:
        image.verify()
    with Image.open(out) as image:
        assert image.format == "PNG" and image.size == (1000, 700)
        assert len(np.unique(np.asarray(image.convert("L")))) > 10  # something is drawn, not a blank canvas


def test_throughput_is_the_slope_of_the_cumulative_counts() -> None:
    mid, pairs_rate, jobs_rate = throughput_series(run_samples())
    assert len(mid) == len(pairs_rate) == len(jobs_rate) > 10
    assert np.allclose(pairs_rate[1:-1], 100, rtol=0.1)  # steady 100 pairs/s
    assert np.allclose(jobs_rate[1:-1], 12.5, rtol=0.1)


def test_edge_cases_still_draw(tmp_path: Path) -> None:
    single = [{"t": 1.5, "pairs_done": 4, "jobs_done": 1, "latency": 1.5}]
    assert plot_bench(single, tmp_path / "one.png", title="one job").stat().st_size > 0
    no_latency = [{"t": t, "pairs_done": 10 * t, "jobs_done": t, "latency": None} for t in range(5)]
    assert plot_bench(no_latency, tmp_path / "progress.png").stat().st_size > 0
    with pytest.raises(ValueError, match="no samples"):
        plot_bench([], tmp_path / "empty.png")


def bursty_samples(rounds: int = 40, jobs_per_round: int = 32) -> list[dict[str, float | None]]:
    """Jobs finishing a round at a time (as a worker finishes them): 32 jobs of 8 pairs every 0.4 s."""
    samples: list[dict[str, float | None]] = []
    for r in range(1, rounds + 1):
        for j in range(jobs_per_round):
            done = (r - 1) * jobs_per_round + j + 1
            samples.append({"t": r * 0.4 + j * 1e-4, "pairs_done": 8 * done, "jobs_done": done, "latency": 0.4})
    return samples


def test_bursts_read_as_a_rate_not_as_spikes() -> None:
    _, pairs_rate, _ = throughput_series(bursty_samples())
    inner = pairs_rate[len(pairs_rate) // 10: -len(pairs_rate) // 10]
    assert np.allclose(inner, 8 * 32 / 0.4, rtol=0.2)  # 640 pairs/s, give or take a round


def test_workloads_are_marked(tmp_path: Path) -> None:
    samples = bursty_samples()
    marks = [{"name": "20x32:text", "start": 0.0, "end": 8.0, "scorer_pairs_per_s": 700.0},
             {"name": "20x32:image-query", "start": 8.0, "end": 16.0, "scorer_pairs_per_s": 900.0}]
    plain = np.asarray(Image.open(plot_bench(samples, tmp_path / "plain.png")).convert("RGB"))
    marked = np.asarray(Image.open(plot_bench(samples, tmp_path / "marked.png", workloads=marks)).convert("RGB"))
    assert plain.shape == marked.shape and (plain != marked).any(axis=-1).mean() > 0.05
