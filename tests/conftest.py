"""Fixtures that start real services on free ports and tear them down.

- ``stack_services``: a redis-server of the tests' own and the embedded
  MongoDB-compatible store (or a real MongoDB when CHATQ_TEST_MONGO_URL names one).
- ``chatq``: a real Celery worker process with the demo model and the API
  (uvicorn) on top of them, shared by the session.
- ``make_stack``: a factory for tests that need a stack of their own (stopping
  a worker, breaking Redis, stopping MongoDB...); everything it starts is
  stopped at teardown.
- ``mongo_url``: a MongoDB-compatible store for store-level tests (the
  embedded one, or CHATQ_TEST_MONGO_URL).
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
import redis

from ops.devstack import Proc, Stack, free_port, wait_worker
from shared.settings import DEV_API_KEY

# Fast heartbeats so tests notice a stopped worker quickly.
TEST_ENV = {
    "CHATQ_WORKER__HEARTBEAT_INTERVAL_S": "0.5",
    "CHATQ_WORKER__HEARTBEAT_TTL_S": "3",
    "CHATQ_WORKER__N_THREADS": "2",
    "CHATQ_LOG_LEVEL": "INFO",
    "CHATQ_API__SSE_KEEPALIVE_S": "0.5",
}


@dataclass
class Chatq:
    """A running chatq stack and handles to reach it."""

    stack: Stack
    base_url: str
    redis_url: str
    worker: Proc | None
    api: Proc
    mongo_port: int | None = None  # the embedded store's port; None with CHATQ_TEST_MONGO_URL

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
        return redis.Redis.from_url(self.redis_url, decode_responses=True)

    def heartbeat(self, queue: str = "cpu") -> dict[str, str]:
        return wait_worker(self.redis_url, queue, timeout=60, proc=self.worker)


def _new_stack(root: Path, name: str) -> Stack:
    stack = Stack(root / name, env=dict(TEST_ENV))
    stack.env["CHATQ_REDIS_URL"] = stack.start_redis()
    mongo = os.environ.get("CHATQ_TEST_MONGO_URL")
    if mongo:
        stack.env["CHATQ_MONGO_URL"] = mongo
    else:
        port = free_port()
        stack.env["CHATQ_MONGO_URL"] = stack.start_mongo(port)
        stack.env["CHATQ_TEST_MONGO_PORT"] = str(port)
    return stack


def _start_chatq(stack: Stack, with_worker: bool = True) -> Chatq:
    worker = None
    if with_worker:
        worker = stack.start_worker("cpu")
        wait_worker(stack.env["CHATQ_REDIS_URL"], "cpu", timeout=120, proc=worker)
    port = free_port()
    api = stack.start_api(port)
    mongo_port = stack.env.get("CHATQ_TEST_MONGO_PORT")
    return Chatq(stack, f"http://127.0.0.1:{port}", stack.env["CHATQ_REDIS_URL"], worker, api,
                 int(mongo_port) if mongo_port else None)


@pytest.fixture(scope="session")
def chatq(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Chatq]:
    stack = _new_stack(tmp_path_factory.mktemp("stack"), "main")
    try:
        yield _start_chatq(stack)
    finally:
        stack.stop()


@pytest.fixture
def client(chatq: Chatq) -> Iterator[httpx.Client]:
    with chatq.client() as c:
        yield c


@pytest.fixture
def make_stack(tmp_path: Path) -> Iterator[Callable[..., Chatq]]:
    stacks: list[Stack] = []

    def factory(with_worker: bool = True, env: dict[str, str] | None = None) -> Chatq:
        stack = _new_stack(tmp_path, f"stack{len(stacks)}")
        stack.env.update(env or {})
        stacks.append(stack)
        return _start_chatq(stack, with_worker)

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
