"""The map as a PNG and as CSV rows.

The PNG: one point per item, coloured by its key (a label, or a modality), a legend of the keys; with a
query, the query as a black star where it lands on the map and its nearest neighbours ringed and numbered
by rank. matplotlib's object API with the Agg canvas: no display, no global pyplot state.
"""

from __future__ import annotations

import csv
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

CSV_COLUMNS = ("index", "line", "label", "modality", "x", "y", "ref", "neighbour_rank", "similarity", "error")
NO_LABEL = "(no label)"


@dataclass
class MapPicture:
    """What a map shows: ``points`` (n × 2), each point's colour ``keys``, and optionally the query's place
    and its ``neighbours`` (``(index, similarity)``, best first)."""

    points: np.ndarray
    keys: Sequence[str]
    title: str = ""
    legend_title: str = ""
    query_point: tuple[float, float] | None = None
    query_text: str = ""
    neighbours: Sequence[tuple[int, float]] = field(default_factory=list)


def palette(keys: Sequence[str]) -> dict[str, Any]:
    """A colour per distinct key, in order of first appearance (tab10, then tab20, then round again)."""
    from matplotlib import colormaps

    distinct = list(dict.fromkeys(keys))
    cmap = colormaps["tab10" if len(distinct) <= 10 else "tab20"]
    return {key: cmap(i % cmap.N) for i, key in enumerate(distinct)}


def plot_map(picture: MapPicture, path: str | Path, size: tuple[float, float] = (10, 7.5), dpi: int = 100) -> Path:
    """Write the map as a PNG at ``path``; returns the path."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=size, dpi=dpi, layout="constrained")
    FigureCanvasAgg(fig)
    ax = fig.subplots()
    colours = palette(picture.keys)
    keys = np.array(picture.keys, dtype=object)
    for key, colour in colours.items():
        mine = picture.points[keys == key]
        ax.scatter(mine[:, 0], mine[:, 1], s=36, color=colour, alpha=0.85, edgecolors="white", linewidths=0.5,
                   label=f"{key} ({len(mine)})")
    _draw_query(ax, picture)
    ax.set_aspect("equal", adjustable="datalim")
    ax.set_xticks([])
    ax.set_yticks([])
    ax.legend(title=picture.legend_title or None, loc="upper left", bbox_to_anchor=(1.01, 1.0), fontsize=8,
              frameon=False)
    if picture.title:
        ax.set_title(picture.title, fontsize=10)
    out = Path(path)
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, format="png")
    return out


def _draw_query(ax: Any, picture: MapPicture) -> None:
    """Ring and number the neighbours; the query as a star, a thin line to each neighbour."""
    if not picture.neighbours:
        return
    near = picture.points[[i for i, _ in picture.neighbours]]
    ax.scatter(near[:, 0], near[:, 1], s=150, facecolors="none", edgecolors="black", linewidths=1.6,
               label=f"{len(near)} nearest the query")
    for rank, (x, y) in enumerate(near, start=1):
        ax.annotate(str(rank), (x, y), xytext=(6, 6), textcoords="offset points", fontsize=8, weight="bold")
    if picture.query_point is not None:
        qx, qy = picture.query_point
        for x, y in near:
            ax.plot([qx, x], [qy, y], color="black", lw=0.6, ls=":", alpha=0.6)
        shown = picture.query_text if len(picture.query_text) <= 40 else picture.query_text[:39] + "…"
        ax.scatter([qx], [qy], marker="*", s=260, color="black", label=f"query: {shown}", zorder=5)


def write_csv(path: str | Path, rows: Sequence[dict[str, Any]]) -> Path:
    """``rows`` (dicts keyed by ``CSV_COLUMNS``; missing keys are empty) as a CSV file with a header."""
    out = Path(path)
    out.parent.mkdir(parents=True, exist_ok=True)
    with out.open("w", newline="", encoding="utf-8") as handle:
        writer = csv.DictWriter(handle, CSV_COLUMNS, extrasaction="raise")
        writer.writeheader()
        for row in rows:
            writer.writerow({k: "" if row.get(k) is None else row[k] for k in CSV_COLUMNS})
    return out
