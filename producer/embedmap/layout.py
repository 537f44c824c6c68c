"""Vectors → a 2-D map: t-SNE or PCA (scikit-learn), and a query's nearest neighbours by cosine.

Pure: numpy in, numpy out, no I/O. Deterministic for a seed (t-SNE's random state; PCA's signs are fixed by
scikit-learn's ``svd_flip``). Every layout is centred and scaled so that its largest coordinate is 1 in absolute
value: maps of one set by either method share a frame, and a drawing needs no further fitting.

Tiny sets work: one point lies at the origin; two or three are laid out by t-SNE with a perplexity below their
count (scikit-learn refuses ``perplexity >= n``); a set whose vectors are all equal lies at the origin.
UMAP is left out on purpose: ``umap-learn`` pulls numba and llvmlite, a heavy install for the producer side.
"""

from __future__ import annotations

import base64
import binascii
from dataclasses import dataclass
from typing import Any

import numpy as np
from numpy.typing import ArrayLike

from rerankq.errors import InvalidRequest

METHODS = ("tsne", "pca")
DEFAULT_PERPLEXITY = 30.0  # scikit-learn's default, for sets large enough to hold it
MAX_POINTS = 5000  # t-SNE's cost grows as n log n per iteration: a few seconds on one core at this size


@dataclass(frozen=True)
class Layout:
    """Points laid out in 2-D, one row per input vector, in input order.

    ``perplexity`` is the one t-SNE used (None for PCA); ``explained`` the share of variance along each PCA
    axis (None for t-SNE)."""

    method: str
    points: np.ndarray
    perplexity: float | None = None
    explained: tuple[float, float] | None = None

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {"method": self.method, "points": self.points.round(6).tolist()}
        if self.perplexity is not None:
            out["perplexity"] = self.perplexity
        if self.explained is not None:
            out["explained_variance"] = list(self.explained)
        return out


def decode(vector: Any, field: str = "vectors") -> np.ndarray | None:
    """A vector as results and ``/v1/embeddings`` give it: a list of numbers, or base64 of little-endian float32
    (``encoding_format: base64``); None stays None. ``InvalidRequest`` naming ``field`` for bad base64."""
    if vector is None:
        return None
    if isinstance(vector, str):
        try:
            raw = base64.b64decode(vector, validate=True)
        except (binascii.Error, ValueError):
            raise InvalidRequest("not base64 (of little-endian float32 values)", field) from None
        if len(raw) % 4:
            raise InvalidRequest(f"{len(raw)} bytes of base64, not a whole number of float32 values", field)
        return np.frombuffer(raw, dtype="<f4").astype(np.float64)
    try:
        return np.asarray(vector, dtype=np.float64)
    except (TypeError, ValueError):
        raise InvalidRequest("expected a list of numbers, or a base64 string of float32 values", field) from None


def as_matrix(vectors: Any, field: str = "vectors") -> np.ndarray:
    """``vectors`` as an (n, d) float64 matrix; ``InvalidRequest`` naming ``field`` when they are not one."""
    try:
        matrix = np.asarray(vectors, dtype=np.float64)
    except (TypeError, ValueError):
        raise InvalidRequest("expected a list of equally long lists of numbers", field) from None
    if matrix.ndim != 2 or matrix.shape[0] == 0 or matrix.shape[1] == 0:
        raise InvalidRequest(f"expected a non-empty list of equally long vectors, got shape {matrix.shape}", field)
    if matrix.shape[0] > MAX_POINTS:
        raise InvalidRequest(f"{matrix.shape[0]} vectors, over the limit {MAX_POINTS}", field)
    bad = np.flatnonzero(~np.isfinite(matrix).all(axis=1))
    if bad.size:
        raise InvalidRequest(f"vector {int(bad[0])} has a value that is not a finite number", field)
    return matrix


def unit_rows(matrix: np.ndarray) -> np.ndarray:
    """Each row scaled to length 1 (a zero row stays zero): Euclidean distance then orders as cosine."""
    norms = np.linalg.norm(matrix, axis=1, keepdims=True)
    return np.divide(matrix, norms, out=np.zeros_like(matrix), where=norms > 0)


def tsne_perplexity(n: int, asked: float | None = None) -> float:
    """The perplexity for ``n`` points: ``asked`` (default 30), lowered to ``(n - 1) / 3`` for a small set so
    that every point keeps about three times that many neighbours, and always below ``n``."""
    value = DEFAULT_PERPLEXITY if asked is None else float(asked)
    if not value > 0:
        raise InvalidRequest(f"{value} is not above 0", "perplexity")
    return float(min(value, max((n - 1) / 3, 0.5)))


def lay_out(vectors: ArrayLike, method: str = "tsne", *, seed: int = 0,
            perplexity: float | None = None) -> Layout:
    """Lay ``vectors`` out in 2-D with ``method`` (``tsne`` or ``pca``); rows are compared by cosine (each is
    scaled to unit length first). ``InvalidRequest`` names the field at fault."""
    if method not in METHODS:
        raise InvalidRequest(f"{method!r} is not one of {', '.join(METHODS)}", "method")
    matrix = unit_rows(as_matrix(vectors))
    n = matrix.shape[0]
    if n == 1 or np.ptp(matrix, axis=0).max() == 0:  # nothing to tell apart
        return Layout(method, np.zeros((n, 2)), tsne_perplexity(n, perplexity) if method == "tsne" else None,
                      (0.0, 0.0) if method == "pca" else None)
    if method == "pca":
        points, explained = _pca(matrix)
        return Layout(method, _framed(points), explained=explained)
    used = tsne_perplexity(n, perplexity)
    return Layout(method, _framed(_tsne(matrix, used, seed)), perplexity=used)


def _pca(matrix: np.ndarray) -> tuple[np.ndarray, tuple[float, float]]:
    from sklearn.decomposition import PCA

    components = min(2, *matrix.shape)
    pca = PCA(n_components=components, svd_solver="full")
    points = np.zeros((matrix.shape[0], 2))
    points[:, :components] = pca.fit_transform(matrix)
    ratios = [*pca.explained_variance_ratio_.tolist(), 0.0][:2]
    return points, (float(ratios[0]), float(ratios[1]))


def _tsne(matrix: np.ndarray, perplexity: float, seed: int) -> np.ndarray:
    from sklearn.manifold import TSNE

    # PCA initialisation keeps the global shape and is deterministic; it needs two components to exist.
    init = "pca" if min(matrix.shape) >= 2 else "random"
    tsne = TSNE(n_components=2, perplexity=perplexity, init=init, learning_rate="auto", random_state=seed)
    points: np.ndarray = tsne.fit_transform(matrix)
    return points


def _framed(points: np.ndarray) -> np.ndarray:
    """Centred on the origin, the largest absolute coordinate 1."""
    points = points.astype(np.float64)  # t-SNE answers in float32
    centred = points - points.mean(axis=0)
    scale = float(np.abs(centred).max())
    return centred / scale if scale > 0 else centred


def neighbours(vectors: ArrayLike, query: ArrayLike, k: int) -> list[tuple[int, float]]:
    """The ``k`` vectors most like ``query`` by cosine similarity, best first: ``(index, similarity)``. Ties
    keep input order. ``InvalidRequest`` when ``query`` does not match the vectors' dimension or ``k < 1``."""
    matrix = as_matrix(vectors)
    if k < 1:
        raise InvalidRequest(f"{k} is below 1", "neighbours")
    q = as_matrix([query], "query")[0] if np.ndim(query) == 1 else None
    if q is None:
        raise InvalidRequest("expected one vector (a list of numbers)", "query")
    if q.shape[0] != matrix.shape[1]:
        raise InvalidRequest(f"{q.shape[0]} dimensions, the vectors have {matrix.shape[1]}", "query")
    similarity = unit_rows(matrix) @ unit_rows(q[None, :])[0]
    order = np.argsort(-similarity, kind="stable")[:k]
    return [(int(i), float(similarity[i])) for i in order]
