"""MongoDB connection (PyMongo's async API; Motor reached end of life in May 2026)."""

from __future__ import annotations

from typing import Any

from pymongo import AsyncMongoClient, MongoClient

from shared.settings import Settings


def make_mongo_client(settings: Settings, timeout_ms: int = 2000) -> AsyncMongoClient[Any]:
    return AsyncMongoClient(
        settings.mongo_url.get_secret_value(),
        serverSelectionTimeoutMS=timeout_ms,
        connectTimeoutMS=timeout_ms,
        tz_aware=True,
    )


def make_sync_mongo_client(settings: Settings, timeout_ms: int = 2000) -> MongoClient[Any]:
    """PyMongo's blocking client, for the worker (a blocking Celery task). Short
    timeouts: a job must not wait long on a MongoDB that is down."""
    return MongoClient(
        settings.mongo_url.get_secret_value(),
        serverSelectionTimeoutMS=timeout_ms,
        connectTimeoutMS=timeout_ms,
        socketTimeoutMS=max(timeout_ms * 3, 5000),
        tz_aware=True,
    )
