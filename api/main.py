"""The chatq API: ``uvicorn --factory api.main:create_app``."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from fastapi import FastAPI
from starlette.types import ASGIApp, Receive, Scope, Send

from api import assets, budgets, conversations, errors, telemetry
from api.batch_feeder import BatchFeeder, BatchLoop
from api.ratelimits import RateHeaders
from api.routers import (
    admin,
    ancestor,
    batches,
    chat,
    completions,
    docs,
    embeddings,
    events,
    files,
    health,
    invocations,
    jobs,
    metrics,
    models,
    playground,
    queues,
    responses,
    usage,
    webhooks,
)
from api.routers import conversations as conversations_router
from api.services import Services
from shared.logs import setup_logging
from shared.settings import Settings, load_settings


class JsonBodies:
    """Treat request bodies as JSON when the client named no type, or curl's default
    form type (``curl -d '{...}'``): every chatq body is JSON. A body that is not
    JSON still gets a clear 422."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and scope["method"] in ("POST", "PUT", "PATCH"):
            headers = [(k, v) for k, v in scope["headers"] if k != b"content-type"]
            kind = dict(scope["headers"]).get(b"content-type", b"")
            if not kind or kind.startswith(b"application/x-www-form-urlencoded"):
                scope = {**scope, "headers": [*headers, (b"content-type", b"application/json")]}
        await self.app(scope, receive, send)


def create_app(settings: Settings | None = None) -> FastAPI:
    settings = settings or load_settings()

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        setup_logging()
        svc = app.state.services = Services.build(settings)
        await svc.start()
        await conversations.ensure_indexes(svc)
        feeder = BatchLoop(BatchFeeder(svc, app.state.batch_routes), asyncio.get_running_loop(),
                           settings.batches.feed_interval_s)
        feeder.start()
        try:
            yield
        finally:
            feeder.stop()
            await svc.close()

    # /docs and /redoc come from api.routers.docs, with no CDN (see there).
    app = FastAPI(title="chatq", version="0.1.0", lifespan=lifespan,
                  docs_url=None, redoc_url=None)
    # The OpenAI routes a batch's lines may name, as their routers run them.
    app.state.batch_routes = {r.url: r for r in (chat.BATCH, completions.BATCH,
                                                  embeddings.BATCH)}
    errors.install(app)
    app.add_middleware(JsonBodies)
    app.add_middleware(RateHeaders)
    # Outside the app: an oversized body is refused before anything reads or parses it.
    app.add_middleware(budgets.BodyLimit, max_bytes=settings.limits.max_body_bytes,
                       answer=errors.error_response, exempt=("/v1/files",))
    telemetry.install(app)
    for module in (admin, health, jobs, events, invocations, chat, completions, embeddings, models,
                   metrics, queues, responses, files, batches,
                   conversations_router, ancestor, usage, webhooks, docs, playground):
        app.include_router(module.router)
    assets.mount(app)
    return app
