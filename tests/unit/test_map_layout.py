"""The embedding map's layout (rerankq.client.embedmap.layout) with the real scikit-learn: shapes, determinism,
tiny sets, clusters kept apart, neighbours by cosine, errors that name the field."""

from __future__ import annotations

import numpy as np
import pytest

from rerankq.client.embedmap.layout import MAX_POINTS, lay_out, neighbours, tsne_perplexity
from rerankq.errors import InvalidRequest


def clusters(per: int = 12, dims: int = 64, seed: int = 0) -> tuple[np.ndarray, list[int]]:
    """Three tight clusters of unit vectors round three random directions."""
    rng = np.random.default_rng(seed)
    centres = rng.normal(size=(3, dims))
    rows = [centres[c] + 0.05 * rng.normal(size=dims) for c in range(3) for _ in range(per)]
    vectors = np.array(rows)
    return vectors / np.linalg.norm(vectors, axis=1, keepdims=True), [c for c in range(3) for _ in range(per)]


@pytest.mark.parametrize("method", ["tsne", "pca"])
def test_a_layout_is_one_framed_point_per_vector_and_keeps_clusters_apart(method: str) -> None:
    vectors, labels = clusters()
    layout = lay_out(vectors, method, seed=1)
    assert layout.points.shape == (36, 2)
    assert np.abs(layout.points).max() == pytest.approx(1.0)
    assert np.allclose(layout.points.mean(axis=0), 0.0, atol=1e-9)
    # every point lies nearer its own cluster's centre than any other cluster's
    centres = np.array([layout.points[[i for i, c in enumerate(labels) if c == k]].mean(axis=0) for k in range(3)])
    nearest = np.argmin(np.linalg.norm(layout.points[:, None, :] - centres[None], axis=2), axis=1)
    assert nearest.tolist() == labels


@pytest.mark.parametrize("method", ["tsne", "pca"])
def test_the_same_seed_gives_the_same_map(method: str) -> None:
    vectors, _ = clusters(seed=3)
    assert np.array_equal(lay_out(vectors, method, seed=7).points, lay_out(vectors, method, seed=7).points)


def test_perplexity_stays_below_the_count_of_a_small_set() -> None:
    assert tsne_perplexity(1000) == 30.0
    assert tsne_perplexity(1000, 5) == 5.0
    assert tsne_perplexity(10) == 3.0
    assert [tsne_perplexity(n) < n for n in (1, 2, 3, 4)] == [True] * 4
    assert lay_out(clusters()[0][:7], "tsne").perplexity == 2.0


@pytest.mark.parametrize("n", [1, 2, 3])
@pytest.mark.parametrize("method", ["tsne", "pca"])
def test_one_two_or_three_points_are_laid_out(n: int, method: str) -> None:
    vectors, _ = clusters()
    points = lay_out(vectors[[0, 12, 24][:n]], method).points
    assert points.shape == (n, 2) and np.isfinite(points).all()
    if n == 1:
        assert points.tolist() == [[0.0, 0.0]]
    else:  # distinct vectors, distinct places
        assert len({tuple(p) for p in points.round(6)}) == n


def test_equal_vectors_lie_at_the_origin_and_scale_does_not_matter() -> None:
    assert lay_out([[1.0, 2.0]] * 4, "tsne").points.tolist() == [[0.0, 0.0]] * 4
    vectors, _ = clusters(per=4)
    scaled = vectors * np.arange(1, 13)[:, None]  # cosine ignores length
    assert np.allclose(lay_out(scaled, "pca").points, lay_out(vectors, "pca").points)


def test_pca_reports_its_explained_variance() -> None:
    layout = lay_out(clusters()[0], "pca")
    first, second = layout.explained or (0.0, 0.0)
    assert 1.0 >= first >= second > 0.0 and first + second > 0.9  # three clusters span a plane
    assert layout.to_dict()["explained_variance"] == [first, second]
    assert "perplexity" not in layout.to_dict()


def test_neighbours_are_the_most_similar_by_cosine_best_first() -> None:
    vectors = [[1.0, 0.0, 0.0], [0.0, 1.0, 0.0], [10.0, 1.0, 0.0], [-1.0, 0.0, 0.0], [0.7, 0.7, 0.0]]
    found = neighbours(vectors, [1.0, 0.1, 0.0], 3)
    assert [i for i, _ in found] == [2, 0, 4]
    assert found[0][1] == pytest.approx(1.0) and found[0][1] > found[1][1] > found[2][1]
    assert [i for i, _ in neighbours(vectors, [1.0, 0.1, 0.0], 99)] == [2, 0, 4, 1, 3]  # k past n: all


@pytest.mark.parametrize(("call", "field", "words"), [
    (lambda: lay_out([], "tsne"), "vectors", "non-empty"),
    (lambda: lay_out([[1.0, 2.0], [3.0]], "tsne"), "vectors", "equally long"),
    (lambda: lay_out([[1.0, float("nan")]], "pca"), "vectors", "vector 0 has a value that is not a finite"),
    (lambda: lay_out([[1.0]] * (MAX_POINTS + 1), "pca"), "vectors", f"over the limit {MAX_POINTS}"),
    (lambda: lay_out([[1.0, 2.0]], "umap"), "method", "not one of tsne, pca"),
    (lambda: lay_out([[1.0, 2.0], [2.0, 1.0]], "tsne", perplexity=0), "perplexity", "not above 0"),
    (lambda: neighbours([[1.0, 2.0]], [1.0, 2.0, 3.0], 1), "query", "3 dimensions, the vectors have 2"),
    (lambda: neighbours([[1.0, 2.0]], [1.0, 2.0], 0), "neighbours", "below 1"),
])
def test_bad_input_names_its_field(call: object, field: str, words: str) -> None:
    with pytest.raises(InvalidRequest) as caught:
        call()  # type: ignore[operator]
    assert caught.value.field == field and words in str(caught.value)
