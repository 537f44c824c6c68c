"""What one gateway process holds: the SDK client, an async Redis pool, the waiter, uploads, metrics.

Submitting, cancelling and S3 reads go through the same ``RerankClient`` as any Python producer (in a small
thread pool: the SDK is synchronous); status reads, queue depths and waiting use the async pool.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from functools import partial
from typing import Any, TypeVar

from rerankq import keys, registry, shardview
from rerankq.capabilities import sorted_modalities
from rerankq.client.client import RerankClient
from rerankq.client.gateway.media import Uploads
from rerankq.client.gateway.metrics import GatewayMetrics
from rerankq.client.gateway.waiter import Waiter
from rerankq.client.gateway.waiters import Waiters
from rerankq.connections import async_redis_client, redis_problem
from rerankq.errors import InvalidRequest, PermanentError
from rerankq.jobs import JobRecord, JobState
from rerankq.settings import Settings
from rerankq.shards import Shards

logger = logging.getLogger(__name__)

T = TypeVar("T")
MODELS_FRESH_S = 1.0  # the worker registry is read at most this often per process
DEPTH_FRESH_S = 0.25  # queue depths likewise


class QueueFull(PermanentError):
    """The model's queue is deeper than ``gateway.max_queue_depth``: answered 429 with Retry-After."""


class UnknownModel(PermanentError):
    """No live worker serves the model a call names: answered 404."""


def _serves(workers: list[dict[str, Any]]) -> dict[str, Any]:
    """What a model's workers say it serves: ``task``, ``reads`` (modalities per side), ``max_length``, and an
    embedding model's ``embedding_dim``."""
    caps = next((c for w in workers if (c := registry.capabilities_of(w)) is not None), None)
    if caps is None:
        return {}
    serves = {"task": caps.task, "max_length": caps.max_length,
              "reads": {"query": sorted_modalities(caps.query), "documents": sorted_modalities(caps.documents)}}
    if caps.embedding_dim is not None:
        serves["embedding_dim"] = caps.embedding_dim
    return serves


class Gateway:
    """The process-wide resources of the HTTP gateway. ``await start()`` / ``await stop()`` in the lifespan."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.client = RerankClient(settings, notify=False)  # jobs are waited for by the gateway's Waiter
        self.pool = ThreadPoolExecutor(16, thread_name_prefix="gateway")
        # With shards (``rerankq.shards``): a pool and a waiter per shard, ``redis`` the home shard's (the recent
        # list); a job's reads go to its shard's, and the registry, depths and throughput add every shard up.
        self.shards = Shards(settings)
        notify = keys.notify_key(settings, f"gateway-{uuid.uuid4().hex}")  # synchronous calls' ends, every shard
        if self.shards.many:
            self.shard_redis = [async_redis_client(self.shards.single(i), max_connections=32)
                                for i in range(self.shards.count)]
            self.redis = self.shard_redis[self.shards.home]
            self.waiter: Any = Waiters(self.shards, self.shard_redis, self.states, notify)
        else:
            self.redis = async_redis_client(settings, max_connections=32)
            self.shard_redis = [self.redis]
            self.waiter = Waiter(settings, self.redis, self.states, notify)
        parts = self.client.sharded.parts if self.client.sharded is not None else [self.client]
        self.sync_redis = [part.redis for part in parts]  # the SDK's clients, shard by shard
        self.uploads = Uploads(settings)
        self.metrics = GatewayMetrics(self)
        self._models: tuple[float, list[dict[str, Any]]] = (0.0, [])
        self._depths: dict[str, tuple[float, int]] = {}

    async def start(self) -> None:
        """Start the waiter; a Redis that cannot be used (down, or refusing the login) is logged with the fix
        (the gateway still starts: ``/readyz`` answers 503 with the same line until Redis answers)."""
        for url, client in zip(self.shards.urls, self.shard_redis, strict=True):
            try:
                await asyncio.wait_for(client.ping(), 5)
            except Exception as exc:
                logger.error("%s", redis_problem(exc, url) or f"Redis: {exc}")
        self.waiter.start()

    async def stop(self) -> None:
        await self.waiter.stop()
        for client in self.shard_redis:
            await client.connection_pool.disconnect()
            await client.aclose()
        self.pool.shutdown(wait=False, cancel_futures=True)
        self.client.close()

    async def run(self, func: Any, *args: Any, **kwargs: Any) -> Any:
        """Run a blocking call (the SDK, boto3) in the gateway's threads."""
        return await asyncio.get_running_loop().run_in_executor(self.pool, partial(func, *args, **kwargs))

    # models and admission -----------------------------------------------------------------------
    async def workers(self) -> list[dict[str, Any]]:
        at, cached = self._models
        if time.monotonic() - at > MODELS_FRESH_S:
            cached = await self.run(shardview.live_workers, self.sync_redis, self.settings)
            self._models = (time.monotonic(), cached)
        return cached

    async def models(self) -> list[dict[str, Any]]:
        """Models with live workers: ``[{"id", "object", "workers", "devices", "quantization", "default", "task",
        "max_length", "reads", "embedding_dim"?}]``; ``id`` is the SPEC jobs are routed by, ``quantization`` what
        its workers run (``["none"]``, ``["int8"]``, or several), ``reads`` the modalities of each side its model
        reads, ``embedding_dim`` an embedding model's vector size."""
        by_model: dict[str, list[dict[str, Any]]] = {}
        for worker in await self.workers():
            by_model.setdefault(worker.get("model", "?"), []).append(worker)
        return [{"id": model, "object": "model", "owned_by": "rerankq", "workers": len(ws),
                 "devices": sorted({w.get("device", "?") for w in ws}),
                 "quantization": sorted({w.get("quantization") or "none" for w in ws}),
                 "default": keys.serves_default(self.settings, model), **_serves(ws)}
                for model, ws in sorted(by_model.items())]

    async def resolve_model(self, name: str | None) -> str | None:
        """The SPEC of the live model a call names (its SPEC, or the SPEC's last path part, any case)."""
        if name is None:
            return None
        models = [m["id"] for m in await self.models()]
        for model in models:
            if name == model or name.lower() == model.rstrip("/").rsplit("/", 1)[-1].lower():
                return model
        served = ", ".join(models) or "none: no worker is running"
        raise UnknownModel(f"no live worker serves the model {name!r} (live models: {served}; GET /v1/models)")

    async def check_serves(self, job: dict[str, Any]) -> None:
        """Refuse (``InvalidRequest``, naming the model and what it reads) a job no live worker of its model can
        serve: an image for a text-only model, a job of another task (``rerankq.registry.job_refusal``)."""
        why = registry.job_refusal(await self.workers(), self.settings, job)
        if why is not None:
            raise InvalidRequest(why[1], why[0])

    async def admit(self, model: str | None) -> None:
        """Refuse new work (``QueueFull``) while the model's queues hold more than the limit."""
        names = keys.model_queue_names(self.settings, model)
        at, depth = self._depths.get(names[0], (0.0, 0))
        if time.monotonic() - at > DEPTH_FRESH_S:
            depth = sum(await self.lengths(names))
            self._depths[names[0]] = (time.monotonic(), depth)
        limit = self.settings.gateway.max_queue_depth
        if depth > limit:
            raise QueueFull(f"{depth} jobs are waiting for this model, over the limit {limit} "
                            "(gateway.max_queue_depth); retry later")

    async def lengths(self, names: list[str]) -> list[int]:
        """The lengths of lists (queues), each summed over every shard: one pipeline per shard, at once."""

        async def on(client: Any) -> list[int]:
            pipe = client.pipeline(transaction=False)
            for name in names:
                pipe.llen(name)
            return list(await pipe.execute())

        per_shard = await asyncio.gather(*(on(client) for client in self.shard_redis))
        return [sum(values) for values in zip(*per_shard, strict=True)]

    def redis_of(self, job_id: str) -> Any:
        """The async client of a job's shard."""
        return self.shard_redis[self.shards.index(job_id)]

    # jobs ---------------------------------------------------------------------------------------
    async def submit(self, job: dict[str, Any], wait: bool = False) -> str:
        """Enqueue a job; ``wait``: the caller waits for it here (its end comes on the waiter's notify list)."""
        job_id: str = await self.run(self.client.submit, job, self.waiter.notify_key if wait else None)
        if wait:
            self.waiter.created(job_id)
        if self.settings.gateway.recent_jobs:
            pipe = self.redis.pipeline(transaction=False)
            pipe.lpush(keys.recent_key(self.settings), job_id)
            pipe.ltrim(keys.recent_key(self.settings), 0, self.settings.gateway.recent_jobs - 1)
            await pipe.execute()
        return job_id

    # Reads go through the SDK's job store (in the threads): one reading of records, deadlines applied.
    async def status(self, job_id: str) -> dict[str, Any]:
        status: dict[str, Any] = await self.run(self.client.status, job_id)
        return status

    async def states(self, job_ids: list[str], watch: bool = False) -> list[JobState | None]:
        states: list[JobState | None] = await self.run(self.client.jobs.states, job_ids, watch)
        return states

    async def result(self, job_id: str) -> dict[str, Any]:
        """A terminal job's result; ``JobFailed`` for failed / cancelled / expired, ``TimeoutError`` if not
        finished, ``NoSuchJob`` for an unknown id. The common case (succeeded, inline) is one async read;
        everything else goes through the SDK."""
        heard = self.waiter.outcome(job_id)  # announced with its end (a synchronous call's job)
        if heard is not None and heard.state == JobState.SUCCEEDED and heard.result:
            return dict(json.loads(heard.result))
        raw = await self.redis_of(job_id).hgetall(keys.job_key(self.settings, job_id))
        if raw:
            record = JobRecord.from_hash(job_id, raw)
            if record.state == JobState.SUCCEEDED and record.result:
                return dict(json.loads(record.result))
        result: dict[str, Any] = await self.run(self.client.result, job_id, 0)
        return result

    async def cancel(self, job_id: str) -> str:
        return str(await self.run(self.client.cancel, job_id))

    async def wait(self, job_id: str, timeout: float) -> bool:
        """Wait up to ``timeout`` seconds for the job to end; True if it did."""
        fut = self.waiter.watch(job_id)
        try:
            await asyncio.wait_for(asyncio.shield(fut), timeout)
            return True
        except TimeoutError:
            return False
        finally:
            self.waiter.forget(job_id)
