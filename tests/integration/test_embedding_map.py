"""The embedding map over the network: the gateway's ``POST /v1/map`` and ``GET /v1/media`` against a real
gateway process (Redis and moto's S3 server behind it), and, with an embedding worker, ``rerankq map`` and the
``/v1/embeddings`` → ``/v1/map`` path the console takes."""

from __future__ import annotations

import base64
import csv
import json
import os
import subprocess
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest

from rerankq.cli.cluster import RedisServer, S3Server, stop_process
from rerankq.client import RerankClient
from tests.integration.conftest import GatewayProcess, WorkerProcess, start_gateway

KEY = "map-key"
HEADERS = {"Authorization": f"Bearer {KEY}"}


@pytest.fixture(scope="module")
def map_gateway(redis_server: RedisServer, s3_server: S3Server, tmp_path_factory: pytest.TempPathFactory
                ) -> Iterator[GatewayProcess]:
    """A gateway with keys and no worker: the layout and the uploads need none."""
    env = {**os.environ, "RERANKQ_REDIS_URL": redis_server.url, "RERANKQ_S3_ENDPOINT_URL": s3_server.url,
           "RERANKQ_QUEUE_PREFIX": f"map{uuid.uuid4().hex[:6]}"}
    gw = start_gateway(env, tmp_path_factory.mktemp("map-gateway"), RERANKQ_API_KEYS=KEY,
                       RERANKQ_GATEWAY__MAX_UPLOAD_BYTES="65536")
    yield gw
    stop_process(gw.proc)


@pytest.fixture()
def http(map_gateway: GatewayProcess) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=map_gateway.url, headers=HEADERS, timeout=120) as client:
        yield client


def clustered(per: int = 8, dims: int = 32) -> np.ndarray:
    rng = np.random.default_rng(5)
    centres = rng.normal(size=(3, dims))
    rows = np.array([centres[c] + 0.05 * rng.normal(size=dims) for c in range(3) for _ in range(per)])
    return rows / np.linalg.norm(rows, axis=1, keepdims=True)


def b64(vector: np.ndarray) -> str:
    return base64.b64encode(vector.astype("<f4").tobytes()).decode()


def test_the_map_route_lays_vectors_out_and_finds_the_query_neighbours(http: httpx.Client) -> None:
    vectors = clustered()
    query = vectors[9] + 0.01
    answer = http.post("/v1/map", json={"vectors": vectors.tolist(), "method": "tsne", "query": query.tolist(),
                                        "neighbours": 3}).json()
    assert answer["method"] == "tsne" and answer["perplexity"] == 8.0  # (24 + the query - 1) / 3
    points = np.array(answer["points"])
    assert points.shape == (24, 2) and np.abs(np.vstack([points, answer["query_point"]])).max() == pytest.approx(1)
    assert answer["neighbours"][0]["index"] == 9
    assert {n["index"] for n in answer["neighbours"]} <= set(range(8, 16))  # its own cluster
    sims = [n["similarity"] for n in answer["neighbours"]]
    assert sims == sorted(sims, reverse=True) and sims[0] > 0.99
    # the query lands among its cluster: nearer their centre than the other clusters'
    centres = [points[c * 8:(c + 1) * 8].mean(axis=0) for c in range(3)]
    assert int(np.argmin([np.linalg.norm(np.array(answer["query_point"]) - c) for c in centres])) == 1


def test_base64_vectors_as_embeddings_returns_them_give_the_same_map(http: httpx.Client) -> None:
    vectors = clustered(per=4).astype("<f4").astype(np.float64)
    floats = http.post("/v1/map", json={"vectors": vectors.tolist(), "method": "pca"}).json()
    encoded = http.post("/v1/map", json={"vectors": [b64(v) for v in vectors], "method": "pca"}).json()
    assert np.allclose(encoded["points"], floats["points"], atol=1e-6)
    assert len(floats["explained_variance"]) == 2 and "query_point" not in floats


@pytest.mark.parametrize(("body", "field", "words"), [
    ({"vectors": []}, "vectors", "non-empty list"),
    ({"vectors": [[1, 2], [3]]}, "vectors", "equally long"),
    ({"vectors": [[1, 2], "%%%"]}, "vectors[1]", "not base64"),
    ({"vectors": [[1, 2], [2, 1]], "method": "umap"}, "method", "not one of tsne, pca"),
    ({"vectors": [[1, 2], [2, 1]], "neighbours": 2.5, "query": [1, 2]}, "neighbours", "an integer"),
    ({"vectors": [[1, 2], [2, 1]], "query": [1, 2, 3]}, "query", "3 dimensions, the vectors have 2"),
    ({"vectors": [[1, 2]], "labels": ["a"]}, "labels", "unknown field (allowed: vectors, method, seed"),
])
def test_a_bad_map_request_is_a_400_naming_the_field(http: httpx.Client, body: dict[str, Any], field: str,
                                                     words: str) -> None:
    response = http.post("/v1/map", json=body)
    assert response.status_code == 400, response.text
    assert response.json()["field"] == field and words in response.json()["message"]


def test_the_map_needs_the_key(map_gateway: GatewayProcess) -> None:
    assert httpx.post(f"{map_gateway.url}/v1/map", json={"vectors": [[1.0, 0.0]]}).status_code == 401
    assert httpx.get(f"{map_gateway.url}/v1/media", params={"uri": "s3://uploads/u/x.png"}).status_code == 401


def test_an_upload_is_handed_back_and_nothing_else(http: httpx.Client, s3: Any) -> None:
    from rerankq.cli.samples import image_bytes, noise_image

    png = image_bytes(noise_image(16, 12, seed=3))
    stored = http.post("/v1/media", files={"file": ("dot.png", png, "image/png")}).json()
    back = http.get("/v1/media", params={"uri": stored["uri"]})
    assert back.status_code == 200 and back.content == png and back.headers["content-type"] == "image/png"
    missing = stored["uri"].replace(stored["sha256"], "0" * 64)
    assert http.get("/v1/media", params={"uri": missing}).status_code == 404
    s3.put_object(Bucket="uploads", Key="secret.txt", Body=b"not yours")
    for uri in ("s3://uploads/secret.txt", "s3://results/large/x.json", "s3://uploads/u/../secret.txt", "",
                f"https://example.org/{stored['sha256']}.png"):
        refused = http.get("/v1/media", params={"uri": uri})
        assert refused.status_code == 400 and refused.json()["field"] == "uri", uri



def test_rerankq_map_draws_and_exports_items_embedded_through_the_queue(
        embed_worker: WorkerProcess, media: dict[str, str], tmp_path: Path) -> None:
    from PIL import Image

    lines: list[Any] = [
        {"text": "a cat on a mat", "label": "cats"},
        {"image": media["cat.png"], "label": "cats"},
        {"text": "stock markets fell today", "label": "news"},
        {"video": media["clip.mp4"], "label": "clips"},
        {"text": "two frames", "video": [media["frame0.png"], media["frame1.png"]], "label": "clips"},
        "a line without a label",
        {"image": "s3://media/q/no-such-picture.png", "label": "cats"},
        {"text": "a dog", "image": media["dog.jpg"], "label": "dogs"},
    ]
    source = tmp_path / "items.jsonl"
    source.write_text("\n".join(json.dumps(line) for line in lines) + "\n")
    png, table = tmp_path / "out" / "map.png", tmp_path / "out" / "map.csv"
    run = subprocess.run([sys.executable, "-m", "rerankq.cli", "map", str(source), "--plot", str(png), "--csv",
                          str(table), "--query", "a cat", "--neighbours", "3", "--timeout", "180"],
                         env=embed_worker.env, capture_output=True, text=True, timeout=600)
    assert run.returncode == 0, run.stderr
    assert run.stderr.startswith("line 7: left off the map: s3://media/q/no-such-picture.png"), run.stderr
    assert run.stdout.startswith("7 items, ") and "(t-SNE, perplexity 2.33); 1 left off; wrote" in run.stdout

    rows = list(csv.DictReader(table.read_text().splitlines()))
    assert [r["index"] for r in rows] == ["0", "1", "2", "3", "4", "5", "7", "6", "query"]  # laid out, failed, query
    assert [r["label"] for r in rows[:7]] == ["cats", "cats", "news", "clips", "clips", "", "dogs"]
    assert [r["modality"] for r in rows[:7]] == ["text", "image", "text", "video", "text+video", "text", "text+image"]
    assert rows[7]["error"] and not rows[7]["x"] and rows[8]["ref"] == "a cat"
    assert max(abs(float(r[c])) for r in rows if r["x"] for c in "xy") == pytest.approx(1.0)

    # the highlighted neighbours are the items nearest the query by cosine, as the SDK's own vectors say
    sides = [{"text": line} if isinstance(line, str) else {k: v for k, v in line.items() if k != "label"}
             for k, line in enumerate(lines) if k != 6]
    with RerankClient(embed_worker.settings) as client:
        items = np.array(client.embed(sides, timeout=180)["embeddings"])
        query = np.array(client.embed(["a cat"], timeout=180)["embeddings"][0])
    kept = [0, 1, 2, 3, 4, 5, 7]
    nearest = [kept[i] for i in np.argsort(-(items @ query))[:3]]
    ranked = sorted((int(r["neighbour_rank"]), int(r["index"]), float(r["similarity"])) for r in rows
                    if r["neighbour_rank"])
    assert [index for _, index, _ in ranked] == nearest
    assert [s for _, _, s in ranked] == pytest.approx(sorted(items @ query, reverse=True)[:3], abs=1e-4)

    with Image.open(png) as image:
        assert image.format == "PNG" and image.size == (1000, 750)
        assert len(np.unique(np.asarray(image.convert("RGB")).reshape(-1, 3), axis=0)) > 50
