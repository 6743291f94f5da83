"""What one worker process holds: its engine (the resident model, or the remote
server its registry model names as ``upstream``), its job store, its heartbeat, the
outbox drainer and the recovery sweeper.

Created once per worker process, after Celery set the process up and before
it consumes a message (``worker_init``). The worker runs Celery's thread pool
(one thread per slot, no fork): llama.cpp state and Redis sockets never cross
a fork.
"""

from __future__ import annotations

import json
import logging
import os
import socket
import threading
import time
from typing import Any

import redis
from redis.backoff import ExponentialBackoff
from redis.retry import Retry

from shared.conversations import WorkerConversationStore
from shared.dispatch import Dispatcher
from shared.keys import Keys
from shared.lifecycle import BlockingJobs, store_config
from shared.mongo import make_sync_mongo_client
from shared.opstats import batch_increments, cache_increments
from shared.periodic import Periodic
from shared.recovery import Sweeper, SweeperThread
from shared.redis_conn import blocking_client
from shared.registry import ModelSpec, Registry
from shared.settings import Settings
from workers.cancels import CancelListener
from workers.engine import Engine
from workers.llama import LlamaEngine
from workers.persistence import OutboxDrainer, Persister
from workers.upstream_engine import UpstreamEngine

log = logging.getLogger(__name__)


class Heartbeat(Periodic):
    """Keeps ``chatq:worker:{id}`` fresh: queue, model, slots (total, busy), the jobs it
    runs, jobs done, and what the engine reports (context and batch size, its prompt
    cache's size; for an upstream its kind, URL and model, never its key). Adds the
    engine's batch sizes and prompt cache counters since the last beat to the queue's
    stats (see :mod:`shared.opstats`)."""

    def __init__(self, client: redis.Redis, keys: Keys, settings: Settings,
                 info: dict[str, str], engine: Engine) -> None:
        super().__init__("chatq-heartbeat", settings.worker.heartbeat_interval_s, self.beat,
                         expected=(redis.RedisError,), expected_message="heartbeat failed",
                         logger=log)
        self.redis = client
        self.keys = keys
        self.ttl = settings.worker.heartbeat_ttl_s
        self.info = info
        self.engine = engine
        self.worker_id = info["worker_id"]
        self.jobs_done = 0
        self._batches_sent: dict[int, int] = {}  # the engine's batch sizes already counted
        self._cache_sent: dict[str, int] = {}  # the engine's cache counters already counted
        self._running: set[str] = set()
        self._lock = threading.Lock()

    def track(self, job_id: str) -> None:
        with self._lock:
            self._running.add(job_id)

    def untrack(self, job_id: str) -> None:
        with self._lock:
            self._running.discard(job_id)
            self.jobs_done += 1

    def beat(self) -> None:
        now = time.time()
        with self._lock:
            running = sorted(self._running)
        fields: dict[Any, str | int | float] = {
            **self.info, **self.engine.info(), "slots": self.engine.slots,
            "slots_busy": len(running), "running": json.dumps(running),
            "jobs_done": self.jobs_done, "last_beat": now,
        }
        cache = self.engine.cache_info()  # the prompt cache's size and counters
        fields.update(cache)
        batches = self.engine.batch_sizes()
        delta = {size: n - self._batches_sent.get(size, 0) for size, n in batches.items()}
        increments = {**batch_increments(self.info["model"], delta),
                      **cache_increments(self.info["model"], cache, self._cache_sent)}
        with self.redis.pipeline(transaction=True) as pipe:
            pipe.hset(self.keys.worker(self.worker_id), mapping=fields)
            pipe.expire(self.keys.worker(self.worker_id), int(self.ttl) + 1)
            pipe.zadd(self.keys.workers(), {self.worker_id: now})
            for key, n in increments.items():
                if n:
                    pipe.hincrby(self.keys.queue_stats(self.info["queue"]), key, n)
            pipe.execute()
        self._batches_sent = batches
        self._cache_sent = cache

    def stop(self, timeout: float | None = None) -> None:
        """Stop beating and say so: the sweeper requeues what this worker still held."""
        super().stop(timeout)
        try:
            self.redis.delete(self.keys.worker(self.worker_id))
            self.redis.zrem(self.keys.workers(), self.worker_id)
        except redis.RedisError:
            pass  # the entry expires by itself


def worker_identity(queue: str) -> str:
    """This process's worker id: its queue, host and pid (the heartbeat's key, the
    running jobs' owner, and the name of its own queue: shared.affinity)."""
    return f"{queue}@{socket.gethostname()}:{os.getpid()}"


def load_engine(spec: ModelSpec, registry: Registry, settings: Settings) -> Engine:
    """The engine the model's spec asks for: its upstream server, or its GGUF file."""
    if spec.upstream is not None:
        return UpstreamEngine(spec)
    return LlamaEngine(spec, registry.gguf_path(spec), settings.worker.n_threads)


class Runtime:
    """The worker process's parts, built from the registry the Celery app loaded (once
    per process: the app needs it first, for the slot count and the start checks)."""

    def __init__(self, settings: Settings, registry: Registry) -> None:
        self.settings = settings
        self.spec: ModelSpec = registry.for_queue(settings.worker.queue)
        self.engine = load_engine(self.spec, registry, settings)
        # Generation goes on through a Redis restart: writes wait and retry (about 30 s).
        self.redis = blocking_client(
            settings.redis_url, decode_responses=True, health_check_interval=10,
            retry=Retry(ExponentialBackoff(cap=2.0, base=0.1), retries=20),
            retry_on_error=[redis.ConnectionError, redis.TimeoutError])
        self.jobs = BlockingJobs(self.redis, store_config(settings))
        self.worker_id = worker_identity(settings.worker.queue)
        hostname, pid = socket.gethostname(), os.getpid()
        info = {"worker_id": self.worker_id, "queue": settings.worker.queue,
                "model": self.spec.name, "pid": str(pid), "hostname": hostname}
        if self.spec.upstream is None:
            info["gpu_layers"] = str(self.spec.gpu_layers)
        self.heartbeat = Heartbeat(self.redis, self.jobs.keys, settings, info, self.engine)
        self.heartbeat.beat()
        self.heartbeat.start()
        self.cancels = CancelListener(
            self.redis, self.jobs.keys.cancels(),
            others={self.jobs.keys.conversation_deletes(): self._conversation_deleted})
        self.cancels.start()
        conv = settings.conversations
        self.mongo = make_sync_mongo_client(settings, conv.mongo_timeout_ms)
        self.conversations = WorkerConversationStore(self.mongo, settings.mongo_db)
        self.persister = Persister(self.conversations, self.jobs)
        self.drainer = OutboxDrainer(self.persister, conv.outbox_interval_s)
        self.drainer.start()
        self.dispatcher = Dispatcher(settings, "chatq-worker-sweeper")
        self.sweeper = SweeperThread(Sweeper(self.jobs, self.dispatcher, settings),
                                     settings.jobs.sweep_interval_s)
        self.sweeper.start()

    def _conversation_deleted(self, message: str) -> None:
        """A deleted conversation (the API's message): the engine's cache drops it."""
        body = json.loads(message)
        self.engine.forget_conversation(str(body["tenant"]), str(body["conversation_id"]))
        log.info("conversation deleted: dropped from the prompt cache",
                 extra={"conversation_id": body["conversation_id"]})

    def close(self) -> None:
        self.cancels.stop()
        self.sweeper.stop()
        self.drainer.stop()
        self.heartbeat.stop()
        self.engine.close()
        self.dispatcher.close()
        self.mongo.close()
        self.redis.close()
