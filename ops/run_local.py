"""``make run``: the whole chatq stack on this machine, on embedded defaults.

Redis at 127.0.0.1:6379 if it answers (else a redis-server of our own on a free
port), the embedded MongoDB-compatible store unless CHATQ_MONGO_URL is set, one
worker per queue in ``CHATQ_RUN_QUEUES`` (comma-separated; default: the default
model's queue) with that queue's model from the registry (``CHATQ_REGISTRY``),
the webhook worker, Flower (basic auth) and the API. Models that come from chunk
packages are assembled first, once. Ctrl-C stops every child.

A model worker that dies (a crash, the OOM killer, a poison job) is started again
instead of taking the stack down: after 1 s, then 2, 4... up to 30 s, at most 5
times in 10 minutes (:class:`Restarts`), each restart printed with the exit code and
the log to read; past that, or when any other process exits, the stack stops.
Recovery requeues the dead worker's jobs meanwhile (see ``shared/recovery.py``).

An upstream queue from the environment: with ``CHATQ_UPSTREAM_URL`` (an
OpenAI-compatible base URL, e.g. a vLLM server's ``http://host:8000/v1``) and
``CHATQ_UPSTREAM_MODEL`` (the model's name there), ``make run`` writes a derived
registry (``.data/models.upstream.toml``: the registry's models, their files as
absolute paths, plus that model on queue ``upstream``), serves it everywhere, and
starts a worker for the queue. ``CHATQ_UPSTREAM_KEY_ENV`` names the variable that
holds the API key (never the key itself); ``CHATQ_UPSTREAM_KIND`` is ``openai``
(default; ``azure`` for an ``*.openai.azure.com`` URL), ``azure``, ``vllm`` or
``llama.cpp``; ``CHATQ_UPSTREAM_NAME`` the model's name in chatq (default: the
upstream's).
"""

from __future__ import annotations

import json
import os
import secrets
import signal
import sys
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ops.devstack import ROOT, Proc, Stack, redis_answers, wait_worker
from shared.errors import ConfigError
from shared.registry import LlamaBuild, Registry
from shared.settings import DEV_API_KEY, load_settings

UPSTREAM_QUEUE = "upstream"
API_PORT = int(os.environ.get("CHATQ_API_PORT", "8000"))
FLOWER_PORT = int(os.environ.get("CHATQ_FLOWER_PORT", "5555"))


def main() -> int:
    data_dir = Path(os.environ.get("CHATQ_DATA_DIR", ROOT / ".data"))
    stack = Stack(data_dir / "run")
    for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
        signal.signal(sig, _interrupt)  # also when started with SIGINT ignored (background)
    try:
        urls, workers = _start(stack, data_dir)
        _banner(urls)
        supervisor = Supervisor(stack, {w: _restarter(stack, q) for q, w in workers.items()})
        while (dead := supervisor.poll()) is None:
            time.sleep(0.5)
        print(f"\n{dead.name} exited ({dead.popen.returncode}); its log: {dead.log_path}")
        return 1
    except KeyboardInterrupt:
        print("\nstopping chatq...")
        return 0
    except (RuntimeError, TimeoutError) as exc:
        print(f"\nchatq could not start: {exc}", file=sys.stderr)
        return 1
    except ConfigError as exc:
        print(f"\nchatq could not start: {exc.message}", file=sys.stderr)
        return 1
    finally:
        stack.stop()


def _interrupt(*_: object) -> None:
    raise KeyboardInterrupt


@dataclass
class Restarts:
    """Bounded restarts with backoff for one process: ``base_s`` doubled at each restart
    up to ``cap_s``, at most ``limit`` restarts within ``window_s``."""

    limit: int = 5
    window_s: float = 600.0
    base_s: float = 1.0
    cap_s: float = 30.0
    times: list[float] = field(default_factory=list)

    def next_delay(self, now: float) -> float | None:
        """The wait before the next restart, or None when the budget is spent."""
        self.times = [t for t in self.times if now - t < self.window_s]
        if len(self.times) >= self.limit:
            return None
        delay = min(self.cap_s, self.base_s * 2 ** len(self.times))
        self.times.append(now)
        return delay


class Supervisor:
    """Watches the stack's processes: one of ``restart`` (process name -> how to start
    it again) that exits is started again after its backoff; any other process that
    exits, or one out of restarts, is returned by :meth:`poll` (the stack stops)."""

    def __init__(self, stack: Stack, restart: Mapping[str, Callable[[], Proc]],
                 clock: Callable[[], float] = time.monotonic,
                 make_restarts: Callable[[], Restarts] = Restarts) -> None:
        self.stack = stack
        self.restart = dict(restart)
        self.clock = clock
        self.budgets = {name: make_restarts() for name in self.restart}
        self.pending: dict[str, float] = {}  # name -> when to start it again

    def poll(self) -> Proc | None:
        for proc in [p for p in self.stack.procs if p.popen.poll() is not None]:
            if proc.name not in self.restart or not self._schedule(proc):
                return proc
        now = self.clock()
        for name, at in list(self.pending.items()):
            if at <= now:
                del self.pending[name]
                proc = self.restart[name]()
                print(f"{_now()} {name} started again (pid {proc.popen.pid})", flush=True)
        return None

    def _schedule(self, proc: Proc) -> bool:
        """Take the dead process out of the stack and schedule its restart (False: out
        of restarts)."""
        self.stack.procs.remove(proc)
        budget = self.budgets[proc.name]
        delay = budget.next_delay(self.clock())
        code = proc.popen.returncode
        if delay is None:
            print(f"{_now()} {proc.name} exited ({code}) {budget.limit} times within "
                  f"{budget.window_s:.0f} s; giving up. Its log: {proc.log_path}", flush=True)
            self.stack.procs.append(proc)  # stopped with the rest
            return False
        print(f"{_now()} {proc.name} exited ({code}); starting it again in {delay:.0f} s "
              f"(restart {len(budget.times)} of {budget.limit}). Its log: {proc.log_path}",
              flush=True)
        self.pending[proc.name] = self.clock() + delay
        return True


def _now() -> str:
    return time.strftime("%H:%M:%S")


def _restarter(stack: Stack, queue: str) -> Callable[[], Proc]:
    return lambda: stack.start_worker(queue)


def run_queues(registry: Registry, asked: str) -> list[str]:
    """The queues to start a worker for: ``asked`` (comma-separated), else the default
    model's queue. Each must be a queue of the registry."""
    queues = [q.strip() for q in asked.split(",") if q.strip()]
    queues = queues or [registry.models[registry.default_name].queue]
    unknown = [q for q in queues if q not in registry.queues]
    if unknown:
        raise RuntimeError(f"CHATQ_RUN_QUEUES names {', '.join(unknown)}, not a queue of the "
                           f"registry; its queues: {', '.join(registry.queues)}")
    return list(dict.fromkeys(queues))


def upstream_model(environ: Mapping[str, str]) -> tuple[str, dict[str, Any]] | None:
    """The upstream model ``CHATQ_UPSTREAM_*`` ask for, as a registry table (None: none)."""
    url = environ.get("CHATQ_UPSTREAM_URL", "").strip()
    if not url:
        return None
    model = environ.get("CHATQ_UPSTREAM_MODEL", "").strip()
    kind = environ.get("CHATQ_UPSTREAM_KIND", "").strip() or (
        "azure" if ".openai.azure.com" in url else "openai")
    if not model and kind != "azure":
        raise RuntimeError("CHATQ_UPSTREAM_URL needs CHATQ_UPSTREAM_MODEL (the model's name "
                           "on the upstream)")
    upstream = {"url": url, "kind": kind, "model": model or None,
                "api_key_env": environ.get("CHATQ_UPSTREAM_KEY_ENV", "").strip() or None}
    name = environ.get("CHATQ_UPSTREAM_NAME", "").strip() or model or "upstream"
    return name, {"queue": UPSTREAM_QUEUE,
                  "upstream": {k: v for k, v in upstream.items() if v is not None}}


def _toml_value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return repr(value)
    if isinstance(value, list):
        return f"[{', '.join(_toml_value(v) for v in value)}]"
    # A JSON string is a TOML basic string, but for DEL, which TOML wants escaped.
    return json.dumps(str(value), ensure_ascii=False).replace("\x7f", "\\u007f")


def _toml_table(header: str, body: Mapping[str, Any]) -> list[str]:
    lines = [f"[{header}]"]
    lines += [f"{k} = {_toml_value(v)}" for k, v in body.items() if not isinstance(v, dict)]
    for key, table in body.items():
        if isinstance(table, dict):
            lines += _toml_table(f"{header}.{key}", table)
    return lines


def derived_registry(registry: Registry, name: str, table: Mapping[str, Any]) -> str:
    """The registry as TOML, every model as its file set it (GGUF paths made absolute,
    so the file may live elsewhere), plus the model ``name`` = ``table``."""
    if name in registry.models:
        raise RuntimeError(f"CHATQ_UPSTREAM_NAME: the registry already has a model {name!r}")
    lines = ["# Written by make run (ops/run_local.py): the registry plus the upstream model",
             "# of CHATQ_UPSTREAM_*. Do not edit: it is written again at every start."]
    for spec in registry.models.values():
        body = spec.model_dump(mode="json", exclude_unset=True, exclude={"name"})
        if spec.path is not None:
            body["path"] = str(spec.file_path(registry.base))
        lines += ["", *_toml_table(f"models.{json.dumps(spec.name)}", body)]
    lines += ["", *_toml_table(f"models.{json.dumps(name)}", table)]
    ancestor = registry.ancestor.model_dump(exclude_none=True)
    if ancestor:
        lines += ["", *_toml_table("ancestor", ancestor)]
    return "\n".join(lines) + "\n"


def _registry(stack: Stack, data_dir: Path) -> tuple[Registry, list[str]]:
    """The registry to serve (with the upstream model of the environment, if any) and
    the queues it adds."""
    registry = Registry.load(load_settings().registry)
    extra = upstream_model(os.environ)
    if extra is None:
        return registry, []
    path = data_dir / "models.upstream.toml"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(derived_registry(registry, *extra))
    stack.env["CHATQ_REGISTRY"] = str(path)
    print(f"upstream model {extra[0]!r} on queue {UPSTREAM_QUEUE} (registry: {path})")
    return Registry.load(path), [UPSTREAM_QUEUE]


def _plan(stack: Stack, data_dir: Path) -> tuple[Registry, list[str]]:
    """The registry and the queues to serve, checked before anything starts."""
    registry, added = _registry(stack, data_dir)
    queues = run_queues(registry, os.environ.get("CHATQ_RUN_QUEUES", ""))
    queues = list(dict.fromkeys([*queues, *added]))
    for made in registry.assemble(queues):  # once: a no-op when the file is there
        print(f"model file ready: {made}")
    registry.require(queues, build=LlamaBuild.detect())
    return registry, queues


def _start_workers(stack: Stack, redis_url: str, registry: Registry,
                   queues: list[str]) -> dict[str, str]:
    """Start a worker per queue and wait for each; returns queue -> its process's name."""
    workers = {}
    for queue in queues:
        print(f"starting worker (queue {queue}, model {registry.for_queue(queue).name})...")
        workers[queue] = stack.start_worker(queue)
    for queue, proc in workers.items():
        wait_worker(redis_url, queue, proc=proc)
    idle = [q for q in registry.queues if q not in queues]
    if idle:
        print(f"note: no worker here for queue(s) {', '.join(idle)} (their models answer 503 "
              "and /readyz says so); CHATQ_RUN_QUEUES picks the queues")
    return {queue: proc.name for queue, proc in workers.items()}


def _start(stack: Stack, data_dir: Path) -> tuple[dict[str, str], dict[str, str]]:
    registry, queues = _plan(stack, data_dir)
    redis_url = os.environ.get("CHATQ_REDIS_URL", "redis://127.0.0.1:6379/0")
    if not redis_answers(redis_url):
        print(f"Redis does not answer at {redis_url}; starting redis-server...")
        redis_url = stack.start_redis()
    stack.env["CHATQ_REDIS_URL"] = redis_url
    mongo_url = os.environ.get("CHATQ_MONGO_URL")
    if not mongo_url:
        mongo_url = stack.start_mongo(path=data_dir / "mongo.sqlite3")
        stack.env["CHATQ_MONGO_URL"] = mongo_url
    flower_auth = os.environ.get("CHATQ_FLOWER_AUTH") or f"admin:{secrets.token_urlsafe(9)}"
    workers = _start_workers(stack, redis_url, registry, queues)
    print("starting the webhook worker...")
    stack.start_webhooks()
    stack.start_flower(FLOWER_PORT, flower_auth)
    stack.start_api(API_PORT)
    return {"redis": redis_url, "mongo": mongo_url, "flower_auth": flower_auth,
            "logs": str(stack.data_dir), "queues": ", ".join(queues)}, workers


def _banner(urls: dict[str, str]) -> None:
    api = f"http://127.0.0.1:{API_PORT}"
    print(f"""
chatq is running.
  playground {api}/playground   (chat with the models in a browser)
  API        {api}   (docs: {api}/docs and {api}/redoc, no network needed)
  readiness  {api}/readyz
  Flower     http://127.0.0.1:{FLOWER_PORT}   (basic auth {urls['flower_auth']})
  workers    queue(s) {urls['queues']}   (models: {api}/v1/models)
  Redis      {urls['redis']}
  MongoDB    {urls['mongo']}
  logs       {urls['logs']}/*.log

Try (the development API key is {DEV_API_KEY}; set CHATQ_API__KEYS=key=tenant,... for yours):
  curl -s -X POST {api}/v1/jobs -H 'Authorization: Bearer {DEV_API_KEY}' \\
       -H 'Content-Type: application/json' -H 'Prefer: respond-async' \\
       -d '{{"messages":[{{"role":"user","content":"Hi"}}]}}'
  curl -s {api}/v1/jobs/<id from above> -H 'Authorization: Bearer {DEV_API_KEY}'
  curl -sN {api}/v1/jobs/<id>/events -H 'Authorization: Bearer {DEV_API_KEY}'   # SSE
  curl -s -X POST {api}/v1/jobs -H 'Authorization: Bearer {DEV_API_KEY}' \\
       -H 'Prefer: wait=30' -d '{{"messages":[{{"role":"user","content":"Hi"}}]}}'
  OpenAI SDK: OpenAI(base_url="{api}/v1", api_key="{DEV_API_KEY}")
  Webhooks: the signing secret is at
  curl -s {api}/v1/webhooks/secret -H 'Authorization: Bearer {DEV_API_KEY}'
  python -m ops.webhook_receiver --port 9000 --secret whsec_...   # verifies and prints
  then add "webhook": "http://127.0.0.1:9000/hook" to a job's body

Ctrl-C stops everything.
""", flush=True)


if __name__ == "__main__":
    raise SystemExit(main())
