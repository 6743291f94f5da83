"""What one pool child holds: its model, its job store and its heartbeat.

Created in the pool child (``worker_process_init``), never in the parent
before the fork: llama.cpp state and Redis sockets do not survive a fork.
"""

from __future__ import annotations

import logging
import os
import socket
import threading
import time
from typing import Any

import redis

from shared.conversations import WorkerConversationStore
from shared.jobstore import WorkerJobStore, store_config
from shared.keys import Keys
from shared.mongo import make_sync_mongo_client
from shared.registry import ModelSpec, Registry
from shared.settings import Settings
from workers.engine import Engine
from workers.persistence import OutboxDrainer, Persister

log = logging.getLogger(__name__)


class Heartbeat(threading.Thread):
    """Keeps ``chatq:worker:{id}`` fresh: queue, model, pid, loaded_at, jobs done."""

    def __init__(self, client: redis.Redis, keys: Keys, settings: Settings, info: dict[str, str]):
        super().__init__(name="chatq-heartbeat", daemon=True)
        self.redis = client
        self.keys = keys
        self.interval = settings.worker.heartbeat_interval_s
        self.ttl = settings.worker.heartbeat_ttl_s
        self.info = info
        self.worker_id = info["worker_id"]
        self.jobs_done = 0
        self.current_job = ""
        self._stop = threading.Event()

    def beat(self) -> None:
        now = time.time()
        fields: dict[Any, str | int | float] = {
            **self.info, "jobs_done": self.jobs_done, "current_job": self.current_job,
            "last_beat": now,
        }
        with self.redis.pipeline(transaction=True) as pipe:
            pipe.hset(self.keys.worker(self.worker_id), mapping=fields)
            pipe.expire(self.keys.worker(self.worker_id), int(self.ttl) + 1)
            pipe.zadd(self.keys.workers(), {self.worker_id: now})
            pipe.execute()

    def run(self) -> None:
        while not self._stop.wait(self.interval):
            try:
                self.beat()
            except redis.RedisError as exc:
                log.warning("heartbeat failed", extra={"error": str(exc),
                                                       "worker_id": self.worker_id})

    def stop(self) -> None:
        self._stop.set()
        try:
            self.redis.delete(self.keys.worker(self.worker_id))
            self.redis.zrem(self.keys.workers(), self.worker_id)
        except redis.RedisError:
            pass  # the entry expires by itself


class Runtime:
    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        registry = Registry.load(settings.registry)
        self.spec: ModelSpec = registry.for_queue(settings.worker.queue)
        self.engine = Engine(self.spec, registry.gguf_path(self.spec), settings.worker.n_threads)
        self.redis = redis.Redis.from_url(settings.redis_url, decode_responses=True)
        self.store = WorkerJobStore(self.redis, store_config(settings))
        pid = os.getpid()
        info = {
            "worker_id": f"{settings.worker.queue}@{socket.gethostname()}:{pid}",
            "queue": settings.worker.queue,
            "model": self.spec.name,
            "pid": str(pid),
            "hostname": socket.gethostname(),
            "loaded_at": str(self.engine.loaded_at),
            "gpu_layers": str(self.spec.gpu_layers),
        }
        self.heartbeat = Heartbeat(self.redis, self.store.keys, settings, info)
        self.heartbeat.beat()
        self.heartbeat.start()
        conv = settings.conversations
        self.mongo = make_sync_mongo_client(settings, conv.mongo_timeout_ms)
        self.conversations = WorkerConversationStore(self.mongo, settings.mongo_db)
        self.persister = Persister(self.conversations, self.store)
        self.drainer = OutboxDrainer(self.persister, conv.outbox_interval_s)
        self.drainer.start()

    def close(self) -> None:
        self.drainer.stop()
        self.heartbeat.stop()
        self.mongo.close()
        self.redis.close()
