"""Fixtures that start real services on free ports and tear them down.

- ``stack_services``: a redis-server of the tests' own and the embedded
  MongoDB-compatible store (or a real MongoDB when CHATQ_TEST_MONGO_URL names one).
- ``chatq``: a real Celery worker process with the demo model, the webhook
  worker and the API (uvicorn) on top of them, shared by the session.
- ``make_stack``: a factory for tests that need a stack of their own (stopping
  a worker, breaking Redis, stopping MongoDB, another registry with workers on
  several queues...); everything it starts is stopped at teardown.
- ``mongo_url``: a MongoDB-compatible store for store-level tests (the
  embedded one, or CHATQ_TEST_MONGO_URL).
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import pytest
import redis

from ops.devstack import Proc, Stack, free_port, wait_for, wait_worker
from shared.keys import Keys
from shared.lifecycle import BlockingJobs, StoreConfig
from shared.redis_conn import blocking_client
from shared.registry import Registry
from shared.settings import DEFAULT_REGISTRY, DEV_API_KEY

# Fast heartbeats so tests notice a stopped worker quickly.
TEST_ENV = {
    "CHATQ_WORKER__HEARTBEAT_INTERVAL_S": "0.5",
    "CHATQ_WORKER__HEARTBEAT_TTL_S": "3",
    "CHATQ_WORKER__N_THREADS": "2",
    "CHATQ_LOG_LEVEL": "INFO",
    "CHATQ_API__SSE_KEEPALIVE_S": "0.5",
    # Webhook retries and timeouts short enough for a test to watch them.
    "CHATQ_WEBHOOKS__BACKOFF_S": "0.2",
    "CHATQ_WEBHOOKS__BACKOFF_MAX_S": "1",
    "CHATQ_WEBHOOKS__TIMEOUT_S": "2",
}


@dataclass
class Chatq:
    """A running chatq stack and handles to reach it."""

    stack: Stack
    base_url: str
    redis_url: str
    worker: Proc | None  # the first queue's worker
    api: Proc
    mongo_port: int | None = None  # the embedded store's port; None with CHATQ_TEST_MONGO_URL
    workers: dict[str, Proc] = field(default_factory=dict)  # queue -> its worker
    webhooks: Proc | None = None  # the webhook worker, where the stack has one

    def mongo_proc(self) -> Proc | None:
        return next((p for p in reversed(self.stack.procs) if p.name == "mongo"), None)

    def stop_mongo(self) -> None:
        proc = self.mongo_proc()
        assert proc is not None, "this stack uses an external MongoDB"
        proc.stop()

    def start_mongo(self) -> None:
        """Start the embedded store again on the same port and SQLite file."""
        assert self.mongo_port is not None, "this stack uses an external MongoDB"
        self.stack.start_mongo(self.mongo_port, self.stack.data_dir / "mongo.sqlite3")

    def client(self, key: str | None = DEV_API_KEY, **kwargs: Any) -> httpx.Client:
        """An HTTP client for the API, sending ``key`` (the development key by default)."""
        headers = {"Authorization": f"Bearer {key}"} if key else {}
        kwargs.setdefault("timeout", 30)
        return httpx.Client(base_url=self.base_url, headers=headers, **kwargs)

    def redis(self) -> redis.Redis:
        return blocking_client(self.redis_url, decode_responses=True)

    def heartbeat(self, queue: str = "cpu") -> dict[str, str]:
        return wait_worker(self.redis_url, queue, timeout=60,
                           proc=self.workers.get(queue, self.worker))

    def start_worker(self, queue: str = "cpu", name: str | None = None) -> Proc:
        """Start (again, or another) worker on ``queue`` and wait for its own heartbeat;
        it becomes the queue's worker (stopped at teardown)."""
        proc = self.workers[queue] = self.stack.start_worker(queue, name=name)
        wait_for(lambda: any(b.get("pid") == str(proc.popen.pid)
                             for b in _live(self.redis_url)), 120, "the new worker", proc)
        return proc

    def restart_redis(self) -> None:
        """Stop this stack's redis-server (a clean shutdown) and start it again on the
        same port and files."""
        proc = next(p for p in self.stack.procs if p.name == "redis")
        proc.stop()
        self.stack.procs.remove(proc)
        port = int(self.redis_url.rsplit(":", 1)[1].split("/")[0])
        self.stack.start_redis(port, aof=True)


def _live(redis_url: str) -> list[dict[str, str]]:
    client = redis.Redis.from_url(redis_url, decode_responses=True)
    try:
        jobs = BlockingJobs(client, StoreConfig(keys=Keys("chatq"), max_age_s=1, retention_s=1,
                                                tombstone_s=1))
        return jobs(jobs.ops.live_workers(ttl_s=3))
    finally:
        client.close()


def new_stack(root: Path, name: str, aof: bool = False) -> Stack:
    stack = Stack(root / name, env=dict(TEST_ENV))
    stack.env["CHATQ_REDIS_URL"] = stack.start_redis(aof=aof)
    mongo = os.environ.get("CHATQ_TEST_MONGO_URL")
    if mongo:
        stack.env["CHATQ_MONGO_URL"] = mongo
    else:
        port = free_port()
        stack.env["CHATQ_MONGO_URL"] = stack.start_mongo(port)
        stack.env["CHATQ_TEST_MONGO_PORT"] = str(port)
    return stack


def start_chatq(stack: Stack, with_worker: bool = True,
                queues: Sequence[str] = ("cpu",), with_webhooks: bool = False) -> Chatq:
    workers: dict[str, Proc] = {}
    if with_worker:
        # Models that come from chunk packages are assembled once, outside the repository.
        Registry.load(Path(stack.env.get("CHATQ_REGISTRY", DEFAULT_REGISTRY))).assemble(queues)
        for queue in queues:  # all start at once, then each is waited for
            workers[queue] = stack.start_worker(queue)
        for queue, proc in workers.items():
            wait_worker(stack.env["CHATQ_REDIS_URL"], queue, timeout=120, proc=proc)
    webhooks = stack.start_webhooks() if with_webhooks else None
    port = free_port()
    api = stack.start_api(port)
    mongo_port = stack.env.get("CHATQ_TEST_MONGO_PORT")
    return Chatq(stack, f"http://127.0.0.1:{port}", stack.env["CHATQ_REDIS_URL"],
                 next(iter(workers.values()), None), api,
                 int(mongo_port) if mongo_port else None, workers, webhooks)


@pytest.fixture(scope="session")
def chatq(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Chatq]:
    stack = new_stack(tmp_path_factory.mktemp("stack"), "main")
    try:
        yield start_chatq(stack, with_webhooks=True)
    finally:
        stack.stop()


@pytest.fixture
def client(chatq: Chatq) -> Iterator[httpx.Client]:
    with chatq.client() as c:
        yield c


@pytest.fixture
def make_stack(tmp_path: Path) -> Iterator[Callable[..., Chatq]]:
    stacks: list[Stack] = []

    def factory(with_worker: bool = True, env: dict[str, str] | None = None,
                queues: Sequence[str] = ("cpu",), aof: bool = False,
                with_webhooks: bool = False) -> Chatq:
        stack = new_stack(tmp_path, f"stack{len(stacks)}", aof=aof)
        stack.env.update(env or {})
        stacks.append(stack)
        return start_chatq(stack, with_worker, queues, with_webhooks)

    yield factory
    for stack in stacks:
        stack.stop()


@pytest.fixture(scope="session")
def redis_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A redis-server of the unit tests' own."""
    stack = Stack(tmp_path_factory.mktemp("redis"))
    try:
        yield stack.start_redis()
    finally:
        stack.stop()


@pytest.fixture(scope="session")
def mongo_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A MongoDB-compatible store of the unit tests' own (or CHATQ_TEST_MONGO_URL)."""
    external = os.environ.get("CHATQ_TEST_MONGO_URL")
    if external:
        yield external
        return
    stack = Stack(tmp_path_factory.mktemp("mongo"))
    try:
        yield stack.start_mongo()
    finally:
        stack.stop()


@pytest.fixture
def redis_client(redis_url: str) -> Iterator[redis.Redis]:
    client = redis.Redis.from_url(redis_url, decode_responses=True)
    client.flushdb()
    yield client
    client.close()
