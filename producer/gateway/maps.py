"""The console's embedding map: ``POST /v1/map`` lays vectors out in 2-D (t-SNE or PCA, scikit-learn, in the
gateway's threads) and finds a query's nearest neighbours; ``GET /v1/media?uri=`` hands an upload's bytes back,
for the map's thumbnails.

The vectors come from ``POST /v1/embeddings`` (floats, or its base64 strings as they are); colours, labels and
thumbnails are the page's business, so none of them travels here. Only uploads (``gateway.uploads_uri``) are
handed back: other references stay where they are, the gateway reads no one else's objects for a browser.
"""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Request, Response
from fastapi.responses import JSONResponse

from rerankq.client.gateway.routes import gateway_of, read_json
from rerankq.errors import InvalidRequest

router = APIRouter()
FIELDS = ("vectors", "method", "seed", "perplexity", "query", "neighbours")
DEFAULT_NEIGHBOURS = 5
NO_SKLEARN = "POST /v1/map needs scikit-learn on the gateway: pip install 'rerankq[gateway]'"


def _number(body: dict[str, Any], name: str, kind: type, default: Any) -> Any:
    value = body.get(name, default)
    if value is None or (isinstance(value, int | float) and not isinstance(value, bool)
                         and (kind is float or float(value).is_integer())):
        return value if value is None else kind(value)
    raise InvalidRequest(f"expected {'an integer' if kind is int else 'a number'}", name)


def lay_out_request(body: Any) -> dict[str, Any]:
    """A ``/v1/map`` body → its answer: ``method``, ``points`` (one ``[x, y]`` per vector, in order, framed to
    [-1, 1]), ``perplexity`` or ``explained_variance``, and with a ``query``: ``query_point`` (where it lands,
    laid out with the vectors) and ``neighbours`` (``{index, similarity}``, best first)."""
    import numpy as np

    from rerankq.client.embedmap.layout import as_matrix, decode, lay_out, neighbours

    if not isinstance(body, dict):
        raise InvalidRequest("a JSON object", "body")
    unknown = sorted(set(body) - set(FIELDS))
    if unknown:
        raise InvalidRequest(f"unknown field (allowed: {', '.join(FIELDS)})", unknown[0])
    raw = body.get("vectors")
    if not isinstance(raw, list) or not raw:
        raise InvalidRequest("a non-empty list of vectors (lists of numbers, or base64 strings)", "vectors")
    matrix = as_matrix([decode(v, f"vectors[{i}]") for i, v in enumerate(raw)])
    method = body.get("method", "tsne")
    seed, k = _number(body, "seed", int, 0), _number(body, "neighbours", int, DEFAULT_NEIGHBOURS)
    perplexity = _number(body, "perplexity", float, None)
    query = decode(body.get("query"), "query")
    if query is None:
        return lay_out(matrix, method, seed=seed, perplexity=perplexity).to_dict()
    near = neighbours(matrix, query, k)
    laid = lay_out(np.vstack([matrix, query[None, :]]), method, seed=seed, perplexity=perplexity).to_dict()
    *points, query_point = laid["points"]
    return {**laid, "points": points, "query_point": query_point,
            "neighbours": [{"index": i, "similarity": round(s, 6)} for i, s in near]}


@router.post("/v1/map", tags=["map"], summary="Lay vectors out in 2-D (t-SNE or PCA); a query's neighbours")
async def embedding_map(request: Request) -> Response:
    """``{"vectors": [[...] | "base64", ...], "method"?: "tsne" | "pca", "seed"?, "perplexity"?, "query"?: vector,
    "neighbours"?: k}`` (docs/USAGE.md, *The embedding map*)."""
    gateway = gateway_of(request)
    body = await read_json(request, gateway.settings.gateway.max_body_bytes)
    try:
        answer: dict[str, Any] = await gateway.run(lay_out_request, body)
    except ModuleNotFoundError as exc:
        if (exc.name or "").split(".")[0] not in ("sklearn", "scipy"):
            raise
        return JSONResponse({"message": NO_SKLEARN}, status_code=501)
    return JSONResponse(answer)


@router.get("/v1/media", tags=["media"], summary="An upload's bytes (for thumbnails), by its s3:// reference")
async def uploaded(request: Request, uri: str = "") -> Response:
    gateway = gateway_of(request)
    found = await gateway.run(gateway.uploads.read, uri)
    if found is None:
        return JSONResponse({"message": f"no such upload: {uri}", "field": "uri"}, status_code=404)
    data, mime = found
    return Response(data, media_type=mime, headers={"Cache-Control": "private, max-age=3600"})
