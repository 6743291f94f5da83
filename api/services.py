"""The API process's long-lived clients, built once at start-up (see ``api.main``)."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any

import anyio
import redis.asyncio as aredis
from pymongo import AsyncMongoClient
from redis.asyncio.retry import Retry
from redis.backoff import ExponentialBackoff, NoBackoff
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError

from api.auth import KeyRing
from api.files import FileStore
from api.idempotency import Idempotency
from api.ratelimits import Limiter
from api.streams import FinalViews, StreamHub
from api.tokens import TokenCounter
from shared.dispatch import Dispatcher
from shared.errors import Unavailable
from shared.keys import Keys
from shared.keystore import KeyCache, KeyStore
from shared.lifecycle import AsyncJobs, BlockingJobs, JobRecord, store_config
from shared.mongo import make_mongo_client
from shared.recovery import Sweeper, SweeperThread
from shared.redis_conn import async_client, blocking_client
from shared.registry import Registry
from shared.settings import Settings
from shared.webhooks import TargetPolicy

log = logging.getLogger(__name__)


def api_redis(settings: Settings) -> aredis.Redis:
    """A bounded pool: a request waits for a free connection (up to the wait limit)
    rather than failing when many streams need Redis at once (through Sentinel: the
    master's pool, which follows a failover)."""
    api = settings.api
    return async_client(
        settings.redis_url, decode_responses=True, socket_connect_timeout=2,
        socket_timeout=None, health_check_interval=30, client_name="chatq-api",
        max_connections=api.redis_max_connections, pool_timeout=api.redis_wait_s,
        # Ride out a blip; a real outage answers 503 quickly (streams wait longer).
        retry=Retry(ExponentialBackoff(cap=0.5, base=0.05), retries=3),
        retry_on_error=[RedisConnectionError, RedisTimeoutError])


def pubsub_redis(settings: Settings) -> aredis.Redis:
    """The stream hub's own client (one pub/sub connection): no retries and no
    health-check PINGs, so a broken connection surfaces to the hub, which drops it and
    subscribes again on a new one (see :mod:`api.streams`); through Sentinel, on the
    current master."""
    return async_client(
        settings.redis_url, decode_responses=True, socket_connect_timeout=2,
        socket_timeout=None, socket_keepalive=True, health_check_interval=0,
        client_name="chatq-api-pubsub", max_connections=4, pool_timeout=2,
        retry=Retry(NoBackoff(), retries=0))


@dataclass
class Services:
    settings: Settings
    registry: Registry
    redis: aredis.Redis
    jobs: AsyncJobs
    mongo: AsyncMongoClient[Any]
    dispatcher: Dispatcher
    hub: StreamHub
    api_keys: KeyRing
    tokens: TokenCounter
    sweeper: SweeperThread
    finals: FinalViews[tuple[JobRecord, str]]
    idempotency: Idempotency
    webhook_policy: TargetPolicy
    limiter: Limiter
    key_cache: KeyCache
    files: FileStore

    @property
    def keys(self) -> Keys:
        """The Redis key layout."""
        return self.jobs.keys

    @classmethod
    def build(cls, settings: Settings) -> Services:
        client = api_redis(settings)
        config = store_config(settings)
        mongo = make_mongo_client(settings)
        key_cache = KeyCache(KeyStore(mongo, settings.mongo_db))
        registry = Registry.load(settings.registry)
        dispatcher = Dispatcher(settings, "chatq-api")
        blocking = blocking_client(settings.redis_url, decode_responses=True,
                                   socket_connect_timeout=2, client_name="chatq-sweeper")
        sweeper = SweeperThread(Sweeper(BlockingJobs(blocking, config), dispatcher, settings),
                                settings.jobs.sweep_interval_s)
        return cls(
            settings=settings, registry=registry, redis=client, jobs=AsyncJobs(client, config),
            mongo=mongo, dispatcher=dispatcher,
            hub=StreamHub(pubsub_redis(settings), config.keys,
                          settings.api.stream_patience_s),
            api_keys=KeyRing(settings),
            tokens=TokenCounter(registry, settings.limits.tokenizers_per_model),
            sweeper=sweeper, finals=FinalViews(),
            idempotency=Idempotency(client, config.keys),
            webhook_policy=TargetPolicy.from_settings(settings),
            limiter=Limiter(client, config.keys, settings, key_cache),
            key_cache=key_cache,
            files=FileStore(mongo, settings.mongo_db),
        )

    async def start(self) -> None:
        await self.hub.start()
        self.sweeper.start()

    async def close(self) -> None:
        self.sweeper.stop()
        await self.hub.stop()
        self.dispatcher.close()
        await self.mongo.close()
        await self.redis.aclose()

    async def send(self, job_id: str, queue: str, dispatch: int, lane: int) -> None:
        """Hand a job's message to the broker (Celery's client blocks: a thread does it)."""
        await anyio.to_thread.run_sync(self.dispatcher.send, job_id, queue, dispatch, lane)

    async def live_workers(self) -> list[dict[str, str]]:
        """Workers whose heartbeat is fresh, with what they reported."""
        try:
            return await self.jobs(self.jobs.ops.live_workers(
                self.settings.worker.heartbeat_ttl_s))
        except aredis.RedisError as exc:
            raise Unavailable("Redis is unreachable") from exc

    async def require_worker(self, queue: str) -> None:
        if not any(w.get("queue") == queue for w in await self.live_workers()):
            raise Unavailable(
                f"no live worker on queue {queue!r}; start one with "
                f"CHATQ_WORKER__QUEUE={queue}",
                details={"queue": queue},
            )
