"""The map from its items: embedding them through the queue (jobs of ``CHUNK`` inputs, all submitted before any
is waited for, so that several workers share a large file), then the picture and the CSV rows."""

from __future__ import annotations

import argparse
from dataclasses import dataclass
from typing import Any

import numpy as np

from rerankq.client.embedmap.items import Item
from rerankq.client.embedmap.layout import decode, lay_out, neighbours
from rerankq.client.embedmap.plot import NO_LABEL, MapPicture

CHUNK = 256  # inputs per embedding job: a job is the unit a worker takes, so a large file spreads over workers


@dataclass
class Embedded:
    """The items' vectors (None for one that failed), the failures by item index, and the model's name."""

    vectors: list[np.ndarray | None]
    errors: dict[int, str]
    model: str


def embed(client: Any, sides: list[dict[str, Any]], timeout: float | None, **fields: Any) -> Embedded:
    """Embed ``sides`` through the queue in jobs of ``CHUNK``; ``fields``: the jobs' others (``model``,
    ``instruction``, ``dimensions``), those that are None left out."""
    extra = {k: v for k, v in fields.items() if v is not None}
    ids = [client.submit({"task": "embed", "inputs": sides[at:at + CHUNK], **extra})
           for at in range(0, len(sides), CHUNK)]
    out = Embedded([], {}, "")
    for number, job_id in enumerate(ids):
        result = client.result(job_id, timeout=timeout)
        out.model = str(result.get("model", ""))
        out.vectors += [decode(v) for v in result["embeddings"]]
        out.errors.update({number * CHUNK + e["index"]: e["error"] for e in result.get("errors", [])})
    return out


def colour_keys(items: list[Item], label_by: str | None) -> tuple[list[str], str]:
    """Each item's colour key and the legend's title: labels (``(no label)`` for an item without one) or
    modalities; by label when ``label_by`` is None and any item has one."""
    by = label_by or ("label" if any(i.label is not None for i in items) else "modality")
    if by == "label":
        return [i.label if i.label is not None else NO_LABEL for i in items], "label"
    return [i.modality for i in items], "modality"


def compose(items: list[Item], done: Embedded, args: argparse.Namespace, query: np.ndarray | None
            ) -> tuple[MapPicture, list[dict[str, Any]]]:
    """The picture and the CSV rows of the items that have a vector (and the query's, when given)."""
    kept = [i for i, v in enumerate(done.vectors) if v is not None]
    matrix = np.array([done.vectors[i] for i in kept])
    laid = lay_out(np.vstack([matrix, query]) if query is not None else matrix, args.method, seed=args.seed,
                   perplexity=args.perplexity)
    points = laid.points[:len(kept)]
    near = neighbours(matrix, query, args.neighbours) if query is not None else []
    keys, legend = colour_keys([items[i] for i in kept], args.label_by)
    how = f"t-SNE, perplexity {laid.perplexity:.3g}" if laid.method == "tsne" else "PCA"
    picture = MapPicture(points, keys, f"{len(kept)} items, {done.model} ({how})", legend,
                         tuple(laid.points[-1]) if query is not None else None, args.query or "", near)
    rank = {index: (r, sim) for r, (index, sim) in enumerate(near, start=1)}
    rows: list[dict[str, Any]] = []
    for at, i in enumerate(kept):
        r, sim = rank.get(at, (None, None))
        rows.append({"index": i, "line": items[i].line, "label": items[i].label, "modality": items[i].modality,
                     "x": f"{points[at, 0]:.6f}", "y": f"{points[at, 1]:.6f}", "ref": items[i].describe(),
                     "neighbour_rank": r, "similarity": None if sim is None else f"{sim:.6f}"})
    rows += [{"index": i, "line": items[i].line, "label": items[i].label, "modality": items[i].modality,
              "ref": items[i].describe(), "error": error} for i, error in sorted(done.errors.items())]
    if query is not None:
        rows.append({"index": "query", "modality": "text", "ref": args.query,
                     "x": f"{laid.points[-1, 0]:.6f}", "y": f"{laid.points[-1, 1]:.6f}"})
    return picture, rows
