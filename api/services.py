"""The API process's long-lived clients, built once at start-up (see ``api.main``)."""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from typing import Any

import anyio
import redis.asyncio as aredis
from celery import Celery
from pymongo import AsyncMongoClient

from api.auth import KeyRing
from api.streams import StreamHub
from api.tokens import TokenCounter
from shared.celeryconf import make_celery
from shared.errors import Unavailable
from shared.jobstore import JobStore, store_config
from shared.keys import GENERATE_TASK, Keys
from shared.mongo import make_mongo_client
from shared.registry import Registry
from shared.settings import Settings

log = logging.getLogger(__name__)


class Enqueuer:
    """Puts job ids on Celery queues by task name (the API never imports the worker)."""

    def __init__(self, settings: Settings) -> None:
        self.celery: Celery = make_celery(settings, "chatq-api")
        self.celery.conf.task_publish_retry_policy = {
            "max_retries": 2, "interval_start": 0, "interval_step": 0.2, "interval_max": 0.5,
        }

    async def send(self, job_id: str, queue: str) -> None:
        def _send() -> None:
            self.celery.send_task(GENERATE_TASK, args=[job_id], queue=queue)

        await anyio.to_thread.run_sync(_send)

    def close(self) -> None:
        self.celery.close()


@dataclass
class Services:
    settings: Settings
    registry: Registry
    redis: aredis.Redis
    store: JobStore
    mongo: AsyncMongoClient[Any]
    enqueuer: Enqueuer
    hub: StreamHub
    keys_ring: KeyRing
    tokens: TokenCounter

    @property
    def keys(self) -> Keys:
        return self.store.keys

    @classmethod
    def build(cls, settings: Settings) -> Services:
        client = aredis.Redis.from_url(
            settings.redis_url, decode_responses=True, socket_connect_timeout=2,
            socket_timeout=None, health_check_interval=30, client_name="chatq-api",
        )
        config = store_config(settings)
        registry = Registry.load(settings.registry)
        return cls(
            settings=settings,
            registry=registry,
            redis=client,
            store=JobStore(client, config),
            mongo=make_mongo_client(settings),
            enqueuer=Enqueuer(settings),
            hub=StreamHub(client, config.keys),
            keys_ring=KeyRing(settings),
            tokens=TokenCounter(registry),
        )

    async def start(self) -> None:
        await self.hub.start()

    async def close(self) -> None:
        await self.hub.stop()
        self.enqueuer.close()
        await self.mongo.close()
        await self.redis.aclose()

    async def live_workers(self) -> list[dict[str, str]]:
        """Workers whose heartbeat is fresh, with what they reported."""
        keys = self.keys
        horizon = time.time() - self.settings.worker.heartbeat_ttl_s
        try:
            ids: list[str] = await self.redis.zrangebyscore(  # type: ignore[assignment]
                keys.workers(), horizon, "+inf")
            async with self.redis.pipeline(transaction=False) as pipe:
                for worker_id in ids:
                    pipe.hgetall(keys.worker(worker_id))
                beats = await pipe.execute()
        except aredis.RedisError as exc:
            raise Unavailable(f"Redis is unreachable: {exc}") from exc
        return [b for b in beats if b]

    async def require_worker(self, queue: str) -> None:
        if not any(w.get("queue") == queue for w in await self.live_workers()):
            raise Unavailable(
                f"no live worker on queue {queue!r}; start one with "
                f"CHATQ_WORKER__QUEUE={queue}",
                details={"queue": queue},
            )
