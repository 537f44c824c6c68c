"""The gateway's API: compatible synchronous rerank, asynchronous jobs with server-sent events, media upload.

Every call is a rerankq job (an id, batched with everything else, in Flower and the metrics). Errors are JSON
``{"message", "field"?, "job_id"?}`` with the status a client expects (see ``rerankq.client.gateway.app``).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import AsyncIterator
from typing import Any

from fastapi import APIRouter, Request, Response
from fastapi.responses import JSONResponse, StreamingResponse

from rerankq.client import dialects
from rerankq.client.gateway.state import Gateway
from rerankq.errors import InvalidRequest
from rerankq.jobs import TERMINAL
from rerankq.schema import parse_job

router = APIRouter()
EVENT_POLL_S = 0.25  # progress is re-read this often while an event stream is open


class BodyTooLarge(InvalidRequest):
    """The request body is over the cap: answered 413."""


def gateway_of(request: Request) -> Gateway:
    gateway: Gateway = request.app.state.gateway
    return gateway


async def read_json(request: Request, limit: int) -> Any:
    """The JSON body, refusing more than ``limit`` bytes (counted as it arrives, not trusted from headers)."""
    declared = request.headers.get("content-length")
    if declared and declared.isdigit() and int(declared) > limit:
        raise BodyTooLarge(f"{declared} bytes, over the limit {limit} (gateway.max_body_bytes)", "body")
    chunks, size = [], 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise BodyTooLarge(f"more than {limit} bytes, over the limit {limit} (gateway.max_body_bytes)", "body")
        chunks.append(chunk)
    raw = b"".join(chunks)
    request.state.data_uris = b'"data:' in raw  # translations that store data: URIs run in a thread
    try:
        return json.loads(raw or b"null")
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise InvalidRequest(f"not JSON: {exc}", "body") from None


def _timeout(request: Request, gateway: Gateway) -> float:
    raw = request.query_params.get("timeout") or request.headers.get("x-rerankq-timeout")
    if raw is None:
        return gateway.settings.gateway.default_timeout_s
    try:
        value = float(raw)
    except ValueError:
        raise InvalidRequest(f"{raw!r} is not a number of seconds", "timeout") from None
    limit = gateway.settings.gateway.max_timeout_s
    if not 0 < value <= limit:
        raise InvalidRequest(f"{value} s, outside (0, {limit}] (gateway.max_timeout_s)", "timeout")
    return value


async def _translate(request: Request, translate: Any, body: Any) -> dict[str, Any]:
    """Run a request translation; in a thread only when it stores ``data:`` URIs (S3 calls block)."""
    gateway = gateway_of(request)
    if request.state.data_uris:
        result: dict[str, Any] = await gateway.run(translate, body, gateway.uploads.store_data_uri)
        return result
    return dict(translate(body, gateway.uploads.store_data_uri))


async def _prepare(gateway: Gateway, job: dict[str, Any], priority: str | None) -> dict[str, Any]:
    """Resolve the model, validate (the SDK's messages), admit: the job as the SDK will enqueue it."""
    model = await gateway.resolve_model(job.get("model"))
    if model is None:
        job.pop("model", None)
    else:
        job["model"] = model
    if priority and "priority" not in job:
        job["priority"] = priority
    wire = parse_job(job, gateway.settings).wire()
    await gateway.check_serves(wire)
    await gateway.admit(model)
    return wire


async def _until_disconnected(request: Request) -> None:
    while (await request.receive())["type"] != "http.disconnect":
        pass


async def _wait_or_cancel(request: Request, gateway: Gateway, job_id: str, timeout: float) -> bool:
    """Wait for the job; if the client goes away first, cancel the job. True when the job ended."""
    waiting = asyncio.ensure_future(gateway.wait(job_id, timeout))
    gone = asyncio.ensure_future(_until_disconnected(request))
    try:
        await asyncio.wait({waiting, gone}, return_when=asyncio.FIRST_COMPLETED)
    finally:
        gone.cancel()
    if not waiting.done():
        waiting.cancel()
        with contextlib.suppress(Exception):
            await gateway.cancel(job_id)
        return False
    return waiting.result()


async def synchronous(request: Request, translate: Any) -> tuple[Any, dict[str, Any] | Response]:
    """A compatible synchronous call: read the body, ``translate`` it into a job, submit it and wait for it
    (``?timeout=`` / ``X-Rerankq-Timeout``). Returns the body and the job's result, or the 504 that names the
    job when the wait ran out."""
    gateway = gateway_of(request)
    timeout = _timeout(request, gateway)
    body = await read_json(request, gateway.settings.gateway.max_body_bytes)
    job = await _translate(request, translate, body)
    wire = await _prepare(gateway, job, gateway.settings.gateway.priority)
    job_id = await gateway.submit(wire, wait=True)
    if not await _wait_or_cancel(request, gateway, job_id, timeout):
        return body, JSONResponse({"message": f"job {job_id} did not finish within {timeout:g} s; fetch it later "
                                   f"with GET /v1/jobs/{job_id}/result", "job_id": job_id}, status_code=504,
                                  headers={"Location": f"/v1/jobs/{job_id}"})
    return body, await gateway.result(job_id)


@router.post("/v1/rerank", tags=["rerank"], summary="Rerank (Cohere v1, vLLM, Jina)", operation_id="rerank_v1")
@router.post("/v2/rerank", tags=["rerank"], summary="Rerank (Cohere v2 shape)", operation_id="rerank_v2")
@router.post("/rerank", tags=["rerank"], summary="Rerank (vLLM / Jina shape)", operation_id="rerank")
async def rerank(request: Request) -> Response:
    """Score ``documents`` against ``query`` and answer with the ranking; the call waits for its job (default
    ``gateway.default_timeout_s``; ``?timeout=`` or ``X-Rerankq-Timeout``), then 504 names the job id."""
    body, result = await synchronous(request, dialects.to_job)
    if isinstance(result, Response):
        return result
    version = "2" if request.url.path.startswith("/v2/") else "1"
    asked = body.get("return_documents")
    return_documents = version == "1" if asked is None else bool(asked)
    return JSONResponse(dialects.to_response(result, body, version, return_documents, body.get("model")))


@router.post("/v1/jobs", status_code=202, tags=["jobs"], summary="Submit a job (the job JSON of docs/USAGE.md)")
async def submit_job(request: Request) -> Response:
    gateway = gateway_of(request)
    body = await read_json(request, gateway.settings.gateway.max_body_bytes)
    if not isinstance(body, dict):
        raise InvalidRequest(f"a job is a JSON object, got {type(body).__name__}")
    job = await _translate(request, dialects.job_sides, body)
    job_id = await gateway.submit(await _prepare(gateway, job, None))
    status = await gateway.status(job_id)
    return JSONResponse(status, status_code=202, headers={"Location": f"/v1/jobs/{job_id}"})


@router.get("/v1/jobs/{job_id}", tags=["jobs"], summary="A job's status")
async def job_status(job_id: str, request: Request) -> dict[str, Any]:
    return await gateway_of(request).status(job_id)


@router.get("/v1/jobs/{job_id}/result", tags=["jobs"], summary="A finished job's result")
async def job_result(job_id: str, request: Request) -> dict[str, Any]:
    return await gateway_of(request).result(job_id)


@router.delete("/v1/jobs/{job_id}", tags=["jobs"], summary="Cancel a queued or running job")
async def cancel_job(job_id: str, request: Request) -> dict[str, Any]:
    gateway = gateway_of(request)
    before = await gateway.cancel(job_id)
    return {"job_id": job_id, "cancelled": before in ("queued", "running"), "state_before": before,
            **{"state": (await gateway.status(job_id))["state"]}}


def _event(name: str, data: dict[str, Any]) -> bytes:
    return f"event: {name}\ndata: {json.dumps(data, separators=(',', ':'))}\n\n".encode()


async def _events(gateway: Gateway, job_id: str, first: dict[str, Any]) -> AsyncIterator[bytes]:
    status = first
    yield _event("progress", status)
    fut = gateway.waiter.watch(job_id)
    try:
        while status["state"] not in TERMINAL:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(asyncio.shield(fut), EVENT_POLL_S)
            latest = await gateway.status(job_id)
            if latest != status:
                status = latest
                if status["state"] not in TERMINAL:
                    yield _event("progress", status)
        yield _event("end", status)
    finally:
        gateway.waiter.forget(job_id)


@router.get("/v1/jobs/{job_id}/events", tags=["jobs"], summary="Server-sent events: progress, then the end")
async def job_events(job_id: str, request: Request) -> Response:
    """``event: progress`` with the status each time it changes (the first at once), then ``event: end`` with
    the final status. Read it with ``EventSource`` or, to send a key, with ``fetch`` streaming."""
    gateway = gateway_of(request)
    first = await gateway.status(job_id)
    return StreamingResponse(_events(gateway, job_id, first), media_type="text/event-stream",
                             headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"})


@router.post("/v1/media", tags=["media"], summary="Upload an image or video; returns its s3:// reference")
async def upload(request: Request) -> dict[str, Any]:
    """Multipart form with one ``file``. Same bytes, same reference. The type is judged from the bytes."""
    gateway = gateway_of(request)
    limit = gateway.settings.gateway.max_upload_bytes
    declared = request.headers.get("content-length")
    if declared and declared.isdigit() and int(declared) > limit + 64 * 1024:
        raise BodyTooLarge(f"{declared} bytes, over the limit {limit} (gateway.max_upload_bytes)", "file")
    form = await request.form(max_files=1, max_fields=4)
    try:
        file = form.get("file")
        if file is None or isinstance(file, str):
            raise InvalidRequest("a multipart form with one file field named 'file' is required", "file")
        size = file.size if file.size is not None else 0
        data = await file.read(limit + 1)
    finally:
        await form.close()
    if len(data) > limit:
        raise BodyTooLarge(f"{max(size, len(data))} bytes, over the limit {limit} (gateway.max_upload_bytes)", "file")
    stored: dict[str, Any] = await gateway.run(gateway.uploads.store, data)
    return stored
