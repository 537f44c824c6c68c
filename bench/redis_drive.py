"""The ways ``bench.redis_cost`` sends jobs: each mode prepares its jobs outside the measured window (a batch's
input goes to S3 then) and returns the part that runs inside it, which returns how many jobs succeeded.

- ``many``: ``submit_many`` + ``as_completed`` (which reads each result), the SDK's bulk path;
- ``one``: ``submit`` + ``result``, one job at a time;
- ``gateway``: synchronous ``POST /v2/rerank`` calls to a ``rerankq gateway`` process, ``concurrency`` in
  flight (text jobs only: the call's shape is Cohere's);
- ``batch``: the jobs as one JSONL batch (``submit_batch`` + ``wait_batch``), outputs written to S3.
"""

from __future__ import annotations

import asyncio
import json
import logging
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from bench.throughput import BUCKET

MODES = {"many": "SDK submit_many + as_completed", "one": "SDK submit + result, one job at a time",
         "gateway": "gateway POST /v2/rerank (sync)", "batch": "JSONL batch: submit_batch + wait_batch"}


@dataclass
class Target:
    """What the modes drive: the SDK client, the gateway's URL (when one runs) and the run's knobs."""

    client: Any
    gateway_url: str | None
    concurrency: int
    timeout: float
    batch_poll_s: float


def prepare(mode: str, target: Target, requests: list[dict[str, Any]]) -> Callable[[], int]:
    """The jobs of ``mode``, ready to run: call the result inside the window; it returns the jobs that succeeded."""
    if mode == "many":
        return lambda: _many(target, requests)
    if mode == "one":
        return lambda: _one(target, requests)
    if mode == "gateway":
        calls = [_cohere(r) for r in requests]
        return lambda: asyncio.run(_gateway(target, calls))
    if mode == "batch":
        return _batch(target, requests)
    raise SystemExit(f"unknown mode {mode!r}: one of {', '.join(MODES)}")


def _many(target: Target, requests: list[dict[str, Any]]) -> int:
    client = target.client
    ids = client.submit_many(requests)
    return sum(not isinstance(out, Exception) for _, out in client.as_completed(ids, timeout=target.timeout))


def _one(target: Target, requests: list[dict[str, Any]]) -> int:
    client = target.client
    return sum(bool(client.result(client.submit(r), timeout=target.timeout).get("results")) for r in requests)


def _cohere(request: dict[str, Any]) -> dict[str, Any]:
    texts = [request["query"].get("text"), *(d.get("text") for d in request["documents"])]
    if set(request["query"]) != {"text"} or any(t is None for t in texts):
        raise SystemExit("the gateway mode sends text jobs (KIND text): POST /v2/rerank takes Cohere's shape")
    return {"query": texts[0], "documents": texts[1:], "return_documents": False}


async def _gateway(target: Target, calls: list[dict[str, Any]]) -> int:
    import httpx

    logging.getLogger("httpx").setLevel(logging.WARNING)  # a line per call otherwise
    if target.gateway_url is None:
        raise RuntimeError("no gateway is running")
    gate = asyncio.Semaphore(target.concurrency)
    limits = httpx.Limits(max_connections=target.concurrency)
    async with httpx.AsyncClient(base_url=target.gateway_url, timeout=target.timeout, limits=limits) as http:
        async def call(body: dict[str, Any]) -> bool:
            async with gate:
                resp = await http.post("/v2/rerank", json=body)
                return resp.status_code == 200 and len(resp.json().get("results", [])) == len(body["documents"])

        done = await asyncio.gather(*(call(body) for body in calls))
    return sum(done)


def _batch(target: Target, requests: list[dict[str, Any]]) -> Callable[[], int]:
    client = target.client
    batch_id = f"cost-{uuid.uuid4().hex[:12]}"
    body = "".join(json.dumps({"custom_id": str(i), **r}) + "\n" for i, r in enumerate(requests))
    client.results.client.put_object(Bucket=BUCKET, Key=f"batches/{batch_id}.jsonl", Body=body.encode())

    def run() -> int:
        client.submit_batch(f"s3://{BUCKET}/batches/{batch_id}.jsonl", f"s3://{BUCKET}/out/{batch_id}/",
                            batch_id=batch_id)
        record = client.wait_batch(batch_id, timeout=target.timeout, interval=target.batch_poll_s)
        return int(record.counts.get("succeeded", 0))

    return run
