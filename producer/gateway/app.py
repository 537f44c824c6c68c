"""The gateway's ASGI app: routes, the key check, metrics, error mapping, and the console's static files.

Open without a key: ``/``, ``/static/*`` (the console), ``/healthz`` and ``/readyz`` (probes cannot carry
secrets, and they say only "ok"), ``/docs`` and ``/openapi.json`` (a browser cannot send a key to open them;
Swagger UI's "Authorize" button then sends it with each call). Everything else needs
``Authorization: Bearer <key>`` when ``RERANKQ_API_KEYS`` is set.

Errors, as JSON ``{"message", "field"?, "job_id"?}``: 400 bad request (the SDK's messages, naming the field and
the limit), 401 no or wrong key, 404 no such job / model, 409 result of an unfinished job, or a cancel too late
(with ``state``: ``finishing`` or the state the job ended in), 413 body over the cap, 422 the job failed or was
cancelled, 429 queue too deep (with ``Retry-After``), 503 Redis or S3 unavailable, 504 a synchronous call's wait
ran out (with the job id).
"""

from __future__ import annotations

import hmac
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from importlib import resources
from typing import Any

from fastapi import FastAPI, Request, Response
from fastapi.middleware.cors import CORSMiddleware
from fastapi.responses import FileResponse, JSONResponse
from fastapi.staticfiles import StaticFiles
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from rerankq.client.gateway import batches, embeddings, maps, ops, routes
from rerankq.client.gateway.state import Gateway, QueueFull, UnknownModel
from rerankq.errors import CancelTooLate, InvalidRequest, JobFailed, NoSuchJob, PermanentError, TransientError
from rerankq.settings import Settings

OPEN_PATHS = ("/", "/healthz", "/readyz", "/favicon.ico", "/docs", "/docs/oauth2-redirect", "/openapi.json")
STATIC = resources.files("rerankq.client.gateway") / "static"


class Guard:
    """ASGI middleware: the API-key check and the request metrics, for every HTTP request."""

    def __init__(self, app: ASGIApp, gateway: Gateway) -> None:
        self.app = app
        self.gateway = gateway
        self.keys = [k.encode() for k in gateway.settings.api_keys]

    def _allowed(self, scope: Scope) -> bool:
        path = scope["path"]
        if not self.keys or path in OPEN_PATHS or path.startswith("/static/") or scope["method"] == "OPTIONS":
            return True
        headers = dict(scope["headers"])
        scheme, _, token = headers.get(b"authorization", b"").decode("latin-1").partition(" ")
        given = token.strip().encode()
        return scheme.lower() == "bearer" and any(hmac.compare_digest(given, k) for k in self.keys)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started, status = time.perf_counter(), [500]

        async def sending(message: Message) -> None:
            if message["type"] == "http.response.start":
                status[0] = message["status"]
            await send(message)

        try:
            if self._allowed(scope):
                await self.app(scope, receive, sending)
            else:
                response = JSONResponse({"message": "a valid API key is required: Authorization: Bearer <key>"},
                                        status_code=401, headers={"WWW-Authenticate": "Bearer"})
                await response(scope, receive, sending)
        finally:
            self.gateway.metrics.observe(scope["path"], scope["method"], status[0], time.perf_counter() - started)


def _error(status: int, exc: Exception, headers: dict[str, str] | None = None, **extra: Any) -> JSONResponse:
    body: dict[str, Any] = {"message": str(exc), **extra}
    field = getattr(exc, "field", None)
    if field:
        body["field"] = field
    return JSONResponse(body, status_code=status, headers=headers)


def _handlers(app: FastAPI, settings: Settings) -> None:
    retry_after = {"Retry-After": str(settings.gateway.retry_after_s)}
    table: list[tuple[type[Exception], Any]] = [
        (routes.BodyTooLarge, lambda exc: _error(413, exc)),
        (InvalidRequest, lambda exc: _error(400, exc)),
        (NoSuchJob, lambda exc: _error(404, exc, job_id=exc.job_id)),
        (UnknownModel, lambda exc: _error(404, exc)),
        (QueueFull, lambda exc: _error(429, exc, headers=retry_after)),
        (JobFailed, lambda exc: _error(422, exc, job_id=exc.job_id, state=exc.state)),
        (CancelTooLate, lambda exc: _error(409, exc, job_id=exc.job_id, state=exc.state)),
        (TimeoutError, lambda exc: _error(409, exc)),
        (TransientError, lambda exc: _error(503, exc)),
        (PermanentError, lambda exc: _error(400, exc)),
    ]
    for kind, make in table:
        async def handle(request: Request, exc: Exception, make: Any = make) -> Response:
            response: Response = make(exc)
            return response

        app.add_exception_handler(kind, handle)
    import redis

    from rerankq.connections import redis_problem

    async def unavailable(request: Request, exc: Exception) -> Response:
        problem = redis_problem(exc, settings.redis_url) or f"Redis is unavailable: {exc}"
        return JSONResponse({"message": problem}, status_code=503)

    app.add_exception_handler(redis.RedisError, unavailable)


def _bearer_in_openapi(app: FastAPI) -> None:
    """Declare the bearer key in the OpenAPI schema, so that /docs can send it ("Authorize")."""
    plain = app.openapi

    def openapi() -> dict[str, Any]:
        if app.openapi_schema is None:
            schema = plain()
            schema.setdefault("components", {})["securitySchemes"] = {
                "bearer": {"type": "http", "scheme": "bearer", "description": "a key from RERANKQ_API_KEYS"}}
            schema["security"] = [{"bearer": []}]
            app.openapi_schema = schema
        return app.openapi_schema

    app.openapi = openapi  # type: ignore[method-assign]


def create_app(settings: Settings) -> FastAPI:
    """The gateway app for ``settings`` (one ``Gateway`` per process, started in the lifespan)."""
    gateway = Gateway(settings)

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        await gateway.start()
        try:
            yield
        finally:
            await gateway.stop()

    app = FastAPI(title="rerankq gateway", version="1", lifespan=lifespan,
                  description="Cohere- and vLLM-compatible multimodal rerank, and OpenAI- and Cohere-compatible "
                  "embeddings, over rerankq's queue; async jobs, media upload, and a web console at /.")
    app.state.gateway = gateway
    _bearer_in_openapi(app)
    _handlers(app, settings)
    app.include_router(routes.router)
    app.include_router(embeddings.router)
    app.include_router(batches.router)
    app.include_router(ops.router)
    app.include_router(maps.router)
    app.mount("/static", StaticFiles(directory=str(STATIC)), name="static")

    @app.get("/", include_in_schema=False)
    async def console() -> FileResponse:
        return FileResponse(str(STATIC / "index.html"), headers={"Cache-Control": "no-cache"})

    app.add_middleware(Guard, gateway=gateway)
    if settings.gateway.cors_origins:  # outermost, so that refusals carry CORS headers too
        app.add_middleware(CORSMiddleware, allow_origins=settings.gateway.cors_origins, allow_methods=["*"],
                           allow_headers=["*"], expose_headers=["Location", "Retry-After"])
    return app
