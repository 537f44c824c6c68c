"""``/v1/batches``: JSONL batches over HTTP, the same as ``rerankq batch`` (``rerankq.client.batches``).

``POST /v1/batches`` ``{"input": "s3://…", "output": "s3://bucket/prefix/", "batch_id"?, "priority"?, "model"?,
"completion_window"? (seconds, or "24h"), "callback_url"?, "npy"?}`` → 202 and the batch record; ``GET
/v1/batches/{id}``; ``GET /v1/batches?limit=``; ``POST /v1/batches/{id}/cancel`` (or ``DELETE``).
"""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse

from rerankq.batches import parse_window
from rerankq.client.gateway.routes import gateway_of, read_json
from rerankq.errors import InvalidRequest

router = APIRouter()
FIELDS = ("input", "output", "batch_id", "priority", "model", "completion_window", "callback_url", "npy")


def _window(value: Any) -> float | None:
    if value is None:
        return None
    try:
        return parse_window(value if isinstance(value, int | float) else str(value))
    except ValueError as exc:
        raise InvalidRequest(str(exc), "completion_window") from None


@router.post("/v1/batches", status_code=202, tags=["batches"], summary="Run a JSONL file of jobs from S3")
async def create_batch(request: Request) -> JSONResponse:
    gateway = gateway_of(request)
    body = await read_json(request, gateway.settings.gateway.max_body_bytes)
    if not isinstance(body, dict):
        raise InvalidRequest("a JSON object")
    unknown = sorted(set(body) - set(FIELDS))
    if unknown:
        raise InvalidRequest(f"unknown field (allowed: {', '.join(FIELDS)})", unknown[0])
    for name in ("input", "output"):
        if not isinstance(body.get(name), str):
            raise InvalidRequest("an s3:// URI is required", name)
    if not body["input"].startswith("s3://"):
        raise InvalidRequest("an s3:// URI (upload a local file with the CLI or the SDK)", "input")
    record = await gateway.run(gateway.client.submit_batch, body["input"], body["output"],
                               batch_id=body.get("batch_id"), priority=body.get("priority") or "low",
                               model=body.get("model"), completion_window_s=_window(body.get("completion_window")),
                               callback_url=body.get("callback_url"), npy=bool(body.get("npy")))
    return JSONResponse(record.to_dict(), status_code=202, headers={"Location": f"/v1/batches/{record.batch_id}"})


@router.get("/v1/batches", tags=["batches"], summary="The newest batches")
async def list_batches(request: Request, limit: int = 20) -> dict[str, Any]:
    gateway = gateway_of(request)
    records = await gateway.run(gateway.client.batches, max(1, min(limit, 1000)))
    return {"data": [r.to_dict() for r in records]}


@router.get("/v1/batches/{batch_id}", tags=["batches"], summary="A batch's state and counts")
async def get_batch(batch_id: str, request: Request) -> dict[str, Any]:
    gateway = gateway_of(request)
    record = await gateway.run(gateway.client.batch, batch_id)
    out: dict[str, Any] = record.to_dict()
    return out


@router.post("/v1/batches/{batch_id}/cancel", tags=["batches"], summary="Cancel a batch (finished results kept)")
@router.delete("/v1/batches/{batch_id}", tags=["batches"], summary="Cancel a batch (finished results kept)")
async def cancel_batch(batch_id: str, request: Request) -> dict[str, Any]:
    gateway = gateway_of(request)
    before = await gateway.run(gateway.client.cancel_batch, batch_id)
    record = await gateway.run(gateway.client.batch, batch_id)
    return {**record.to_dict(), "state_before": before}
