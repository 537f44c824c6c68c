"""Operations endpoints: health, readiness, Prometheus metrics, live models, and the console's queue view."""

from __future__ import annotations

import time
from typing import Any

from fastapi import APIRouter, Request, Response
from fastapi.responses import JSONResponse
from prometheus_client import CONTENT_TYPE_LATEST

from rerankq import keys, shardview
from rerankq.client.gateway.routes import gateway_of
from rerankq.connections import redis_problem
from rerankq.jobs import FINISHING

router = APIRouter()


@router.get("/healthz", tags=["ops"], summary="The process is up")
async def healthz() -> dict[str, str]:
    return {"status": "ok"}


@router.get("/readyz", tags=["ops"], summary="Redis answers")
async def readyz(request: Request) -> Response:
    gateway = gateway_of(request)
    for url, client in zip(gateway.shards.urls, gateway.shard_redis, strict=True):  # every shard answers
        try:
            await client.ping()
        except Exception as exc:  # any failure means "not ready", with the reason
            problem = redis_problem(exc, url) or f"Redis: {exc}"
            return JSONResponse({"status": "unavailable", "message": problem}, status_code=503)
    return JSONResponse({"status": "ok"})


@router.get("/metrics", tags=["ops"], summary="Prometheus metrics of this gateway process")
async def metrics(request: Request) -> Response:
    return Response(gateway_of(request).metrics.render(), media_type=CONTENT_TYPE_LATEST)


@router.get("/v1/models", tags=["models"], summary="Models with live workers, and their devices")
async def models(request: Request) -> dict[str, Any]:
    return {"object": "list", "data": await gateway_of(request).models()}


async def _depths(request: Request, models: list[str | None]) -> list[dict[str, Any]]:
    gateway = gateway_of(request)
    rows = [(model, priority, name) for model in models
            for priority, name in zip(keys.PRIORITIES, keys.model_queue_names(gateway.settings, model), strict=True)]
    depths = await gateway.lengths([name for _, _, name in rows])  # every shard's queues added up
    return [{"model": model or "default", "priority": priority, "queue": name, "depth": depth}
            for (model, priority, name), depth in zip(rows, depths, strict=True)]


async def _recent(request: Request) -> list[dict[str, Any]]:
    gateway = gateway_of(request)
    raw = await gateway.redis.lrange(keys.recent_key(gateway.settings), 0, -1)
    ids = [i.decode() if isinstance(i, bytes) else str(i) for i in raw]
    found: list[Any] = [[None] * 4] * len(ids)
    for shard, positions in gateway.shards.group(ids).items():  # each job read on its shard
        pipe = gateway.shard_redis[shard].pipeline(transaction=False)
        for p in positions:
            pipe.hmget(keys.job_key(gateway.settings, ids[p]), "state", "pairs_done", "pairs_total", "created_at")
        for p, fields in zip(positions, await pipe.execute(), strict=True):
            found[p] = fields
    recent = []
    for job_id, (state, done, total, created) in zip(ids, found, strict=True):
        if state is None:
            continue
        shown = "running" if state.decode() == FINISHING else state.decode()
        recent.append({"job_id": job_id, "state": shown, "pairs_done": int(done or 0),
                       "pairs_total": int(total or 0), "created_at": float(created or 0)})
    return recent


@router.get("/v1/queue", tags=["ops"], summary="Queue depths, live workers, throughput, recent jobs")
async def queue_view(request: Request) -> dict[str, Any]:
    """What the console's queue view shows: depth per model and priority, live workers with their model,
    quantization and device, pairs/s over the last minute and per 10 s over the last 10 minutes, recent gateway jobs."""
    gateway = gateway_of(request)
    workers = await gateway.workers()
    others = sorted({w["model"] for w in workers if not keys.serves_default(gateway.settings, w.get("model"))})
    clients, settings = gateway.sync_redis, gateway.settings
    series = await gateway.run(shardview.pairs_series, clients, settings, 600)
    rate = await gateway.run(shardview.recent_rate, clients, settings, 60)
    now = time.time()
    return {
        "queues": await _depths(request, [None, *others]),
        "workers": [{**w, "age_s": round(now - w["started_at"], 1)} for w in workers],
        "pairs_per_s": round(rate, 3),
        "series": series,
        "recent": await _recent(request),
    }
