"""The gateway's embedding API: OpenAI's ``POST /v1/embeddings`` and Cohere's ``POST /v2/embed``.

Each call is one rerankq embedding job (``"task": "embed"``), submitted and waited for as a synchronous rerank
is (``routes.synchronous``: the timeout, the 504 naming the job, the cancel on disconnect, the same error
statuses); the request shapes are translated by ``rerankq.client.embed_dialects``. A model that serves rerank
jobs is refused with 400 naming it and what it serves (field ``task``).
"""

from __future__ import annotations

from fastapi import APIRouter, Request, Response
from fastapi.responses import JSONResponse

from rerankq.client import embed_dialects
from rerankq.client.gateway.routes import synchronous

router = APIRouter()


@router.post("/v1/embeddings", tags=["embeddings"], summary="Embed (OpenAI shape)", operation_id="embeddings")
async def embeddings(request: Request) -> Response:
    """``input`` (a string, strings, or multimodal objects) → ``data[{index, embedding}]`` in input order; inputs
    that failed are left out of ``data`` and listed in ``errors``."""
    body, result = await synchronous(request, embed_dialects.openai_to_job)
    if isinstance(result, Response):
        return result
    return JSONResponse(embed_dialects.to_openai(result, body.get("model")))


@router.post("/v2/embed", tags=["embeddings"], summary="Embed (Cohere v2 shape)", operation_id="embed_v2")
async def embed_v2(request: Request) -> Response:
    """``texts``, ``images`` or ``inputs`` → ``embeddings`` by type (``float``, ``base64``); inputs that failed
    are ``null`` there and listed in ``errors``."""
    body, result = await synchronous(request, embed_dialects.cohere_to_job)
    if isinstance(result, Response):
        return result
    return JSONResponse(embed_dialects.to_cohere(result, body))
