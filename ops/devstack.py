"""Start chatq's processes locally: Redis, the embedded MongoDB-compatible store,
a worker, the webhook worker, Flower and the API (and llama-cpp-python's own
OpenAI-compatible server, an upstream for the tests). Used by ``make run``
(``ops/run_local.py``) and by the test fixtures, so both run the stack the same way.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import redis

from shared.keys import Keys
from shared.lifecycle import BlockingJobs, StoreConfig
from shared.redis_conn import blocking_client

ROOT = Path(__file__).resolve().parent.parent


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_for(
    check: Callable[[], bool], timeout: float, what: str, proc: Proc | None = None
) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc is not None and proc.popen.poll() is not None:
            raise RuntimeError(f"{proc.name} exited with {proc.popen.returncode} "
                               f"while waiting for {what}; log: {proc.log_path}")
        with contextlib.suppress(Exception):
            if check():
                return
        time.sleep(0.1)
    raise TimeoutError(f"timed out after {timeout:.0f} s waiting for {what}")


def redis_answers(url: str) -> bool:
    try:
        return bool(blocking_client(url, socket_connect_timeout=0.5).ping())
    except redis.RedisError:
        return False


@dataclass
class Proc:
    name: str
    popen: subprocess.Popen[bytes]
    log_path: Path

    def stop(self, timeout: float = 15) -> None:
        if self.popen.poll() is not None:
            return
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.popen.pid, signal.SIGTERM)
        try:
            self.popen.wait(timeout)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.popen.pid, signal.SIGKILL)
            self.popen.wait(5)

    def kill(self) -> None:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.popen.pid, signal.SIGKILL)
        self.popen.wait(5)

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""


@dataclass
class Stack:
    """A set of chatq processes sharing one environment; stop() ends them all."""

    data_dir: Path
    env: dict[str, str] = field(default_factory=dict)
    procs: list[Proc] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.data_dir.mkdir(parents=True, exist_ok=True)
        self.env = {**os.environ, "PYTHONUNBUFFERED": "1", **self.env}
        path = self.env.get("PYTHONPATH")
        self.env["PYTHONPATH"] = f"{ROOT}{os.pathsep}{path}" if path else str(ROOT)

    def spawn(self, name: str, argv: list[str], env: dict[str, str] | None = None) -> Proc:
        log_path = self.data_dir / f"{name}.log"
        with log_path.open("ab") as log:
            popen = subprocess.Popen(
                argv, cwd=ROOT, env={**self.env, **(env or {})}, stdout=log,
                stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, start_new_session=True,
            )
        proc = Proc(name, popen, log_path)
        self.procs.append(proc)
        return proc

    def stop(self) -> None:
        for proc in reversed(self.procs):
            proc.stop()
        self.procs.clear()

    # --- services -----------------------------------------------------------

    def start_redis(self, port: int | None = None, aof: bool = False) -> str:
        """A redis-server of the stack's own; with ``aof``, persistent as in production
        (append-only file fsynced every second, in the stack's folder)."""
        if shutil.which("redis-server") is None:
            raise RuntimeError("redis-server is not installed: apt-get install redis-server")
        port = port or free_port()
        persistence = (["--appendonly", "yes", "--appendfsync", "everysec"] if aof
                       else ["--appendonly", "no"])
        # Its files in the stack's folder, never the working directory: a replica's full
        # sync writes an RDB file even with --save "", and a dump.rdb left in the repository
        # would be loaded by every later redis-server started there.
        proc = self.spawn("redis", ["redis-server", "--port", str(port), "--bind", "127.0.0.1",
                                    "--save", "", "--dir", str(self.data_dir), *persistence])
        url = f"redis://127.0.0.1:{port}/0"
        wait_for(lambda: redis_answers(url), 15, f"redis-server on port {port}", proc)
        return url

    def start_mongo(self, port: int | None = None, path: Path | None = None) -> str:
        """The embedded MongoDB-compatible store (mongoeco's wire server on SQLite)."""
        port = port or free_port()
        path = path or self.data_dir / "mongo.sqlite3"
        proc = self.spawn("mongo", [sys.executable, "-m", "ops.embedded_mongo",
                                    "--port", str(port), "--path", str(path)])
        wait_for(lambda: _port_open(port), 30, f"embedded MongoDB on port {port}", proc)
        return f"mongodb://127.0.0.1:{port}/?directConnection=true"

    def start_worker(self, queue: str = "cpu", name: str | None = None,
                     env: dict[str, str] | None = None) -> Proc:
        name = name or f"worker-{queue}"
        # Pool (threads) and concurrency (the model's slots) come from workers.app.
        argv = [sys.executable, "-m", "celery", "-A", "workers.app", "--quiet", "worker",
                "-Q", queue, "-n", f"{name}@%h", "--prefetch-multiplier", "1", "-E",
                "--loglevel", "INFO", "--without-mingle", "--without-gossip"]
        # Celery warns about running as root before logging is set up, so the warning
        # would be the one non-JSON line; dev machines and CI often run as root (the
        # images run as an unprivileged user).
        quiet_root = {"PYTHONWARNINGS": "ignore:You're running the worker with superuser"}
        return self.spawn(name, argv, {"CHATQ_WORKER__QUEUE": queue, **quiet_root,
                                       **(env or {})})

    def start_webhooks(self, name: str = "webhooks", env: dict[str, str] | None = None,
                       timeout: float = 60) -> Proc:
        """The webhook worker (no model): returns once it reads the transition log."""
        merged = {**self.env, **(env or {})}
        queue = merged.get("CHATQ_WEBHOOKS__QUEUE", "webhooks")
        argv = [sys.executable, "-m", "celery", "-A", "workers.webhooks.app", "--quiet", "worker",
                "-Q", queue, "-n", f"{name}@%h", "-E", "--loglevel", "INFO",
                "--without-mingle", "--without-gossip"]
        quiet_root = {"PYTHONWARNINGS": "ignore:You're running the worker with superuser"}
        proc = self.spawn(name, argv, {**quiet_root, **(env or {})})
        redis_url = merged.get("CHATQ_REDIS_URL", "redis://127.0.0.1:6379/0")
        prefix = merged.get("CHATQ_KEY_PREFIX", "chatq")
        wait_for(lambda: _webhooks_reading(redis_url, prefix), timeout,
                 "the webhook worker to read the transition log", proc)
        return proc

    def start_flower(self, port: int, basic_auth: str) -> Proc:
        argv = [sys.executable, "-m", "celery", "-A", "ops.flower_app", "--quiet", "flower",
                f"--port={port}", "--address=127.0.0.1", f"--basic-auth={basic_auth}",
                "--persistent=True", f"--db={self.data_dir / 'flower.db'}",
                "--state_save_interval=10000"]
        proc = self.spawn("flower", argv)
        wait_for(lambda: _port_open(port), 60, f"Flower on port {port}", proc)
        return proc

    def start_llama_server(self, model_path: Path, *, api_key: str | None = None,
                           alias: str = "upstream", n_ctx: int = 2048, n_threads: int = 1,
                           port: int | None = None, name: str = "llama-server") -> str:
        """llama-cpp-python's own OpenAI-compatible server on a GGUF file: an upstream
        for the tests (and for trying an upstream queue locally). Returns its base URL
        (``http://127.0.0.1:PORT/v1``) once it answers ``/v1/models``."""
        port = port or free_port()
        argv = [sys.executable, "-m", "llama_cpp.server", "--model", str(model_path),
                "--model_alias", alias, "--host", "127.0.0.1", "--port", str(port),
                "--n_ctx", str(n_ctx), "--n_threads", str(n_threads),
                "--n_threads_batch", str(n_threads)]
        proc = self.spawn(name, argv + (["--api_key", api_key] if api_key else []))
        base_url = f"http://127.0.0.1:{port}/v1"
        wait_for(lambda: _models_answer(base_url, api_key), 120,
                 f"llama-cpp-python's server on port {port}", proc)
        return base_url

    def start_api(self, port: int, host: str = "127.0.0.1", name: str = "api") -> Proc:
        """An API process (several may run on one stack: replicas behind a balancer)."""
        argv = [sys.executable, "-m", "uvicorn", "--factory", "api.main:create_app",
                "--host", host, "--port", str(port), "--no-access-log",
                "--log-config", str(ROOT / "ops" / "logging.json")]
        proc = self.spawn(name, argv)
        wait_for(lambda: httpx.get(f"http://{host}:{port}/healthz").status_code == 200,
                 60, f"the API on port {port}", proc)
        return proc


def _models_answer(base_url: str, api_key: str | None) -> bool:
    headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
    return httpx.get(f"{base_url}/models", headers=headers, timeout=2).status_code == 200


def wait_worker(redis_url: str, queue: str, timeout: float = 120, proc: Proc | None = None,
                prefix: str = "chatq") -> dict[str, str]:
    """Wait until a worker on ``queue`` has loaded its model and sent a heartbeat."""
    client = blocking_client(redis_url, decode_responses=True)
    jobs = BlockingJobs(client, StoreConfig(keys=Keys(prefix), max_age_s=1, retention_s=1,
                                            tombstone_s=1))
    found: dict[str, str] = {}

    def ready() -> bool:
        for beat in jobs(jobs.ops.live_workers(ttl_s=10)):
            if beat.get("queue") == queue:
                found.update(beat)
                return True
        return False

    try:
        wait_for(ready, timeout, f"a worker on queue {queue!r}", proc)
    finally:
        client.close()
    return found


def _webhooks_reading(redis_url: str, prefix: str) -> bool:
    """A webhook worker reads the transition log (its beat is fresh)."""
    client = blocking_client(redis_url, decode_responses=True)
    try:
        return any(True for _ in client.scan_iter(Keys(prefix).webhook_worker("*")))
    finally:
        client.close()


def _port_open(port: int) -> bool:
    with socket.socket() as s:
        s.settimeout(0.3)
        return s.connect_ex(("127.0.0.1", port)) == 0
