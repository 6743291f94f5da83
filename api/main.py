"""The chatq API: ``uvicorn --factory api.main:create_app``."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from fastapi import FastAPI

from api import conversations, errors, telemetry
from api.routers import ancestor, events, health, invocations, jobs, metrics, models, openai, queues
from api.routers import conversations as conversations_router
from api.services import Services
from shared.logs import setup_logging
from shared.settings import Settings, load_settings


def create_app(settings: Settings | None = None) -> FastAPI:
    settings = settings or load_settings()

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        setup_logging()
        app.state.services = Services.build(settings)
        await app.state.services.start()
        await conversations.ensure_indexes(app.state.services)
        try:
            yield
        finally:
            await app.state.services.close()

    app = FastAPI(title="chatq", version="0.1.0", lifespan=lifespan)
    errors.install(app)
    telemetry.install(app)
    for module in (health, jobs, events, invocations, openai, models, metrics, queues,
                   conversations_router, ancestor):
        app.include_router(module.router)
    return app
