"""``make run``: the whole chatq stack on this machine, on embedded defaults.

Redis at 127.0.0.1:6379 if it answers (else a redis-server of our own on a free
port), the embedded MongoDB-compatible store unless CHATQ_MONGO_URL is set, one
worker on queue ``cpu`` with the demo model, Flower (basic auth) and the API.
Ctrl-C stops every child.
"""

from __future__ import annotations

import os
import secrets
import signal
import sys
import time
from pathlib import Path

from ops.devstack import ROOT, Stack, redis_answers, wait_worker
from shared.settings import DEV_API_KEY

API_PORT = int(os.environ.get("CHATQ_API_PORT", "8000"))
FLOWER_PORT = int(os.environ.get("CHATQ_FLOWER_PORT", "5555"))


def main() -> int:
    data_dir = Path(os.environ.get("CHATQ_DATA_DIR", ROOT / ".data"))
    stack = Stack(data_dir / "run")
    for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
        signal.signal(sig, _interrupt)  # also when started with SIGINT ignored (background)
    try:
        urls = _start(stack, data_dir)
        _banner(urls)
        while all(p.popen.poll() is None for p in stack.procs):
            time.sleep(0.5)
        dead = [p for p in stack.procs if p.popen.poll() is not None]
        for p in dead:
            print(f"\n{p.name} exited ({p.popen.returncode}); its log: {p.log_path}")
        return 1
    except KeyboardInterrupt:
        print("\nstopping chatq...")
        return 0
    except (RuntimeError, TimeoutError) as exc:
        print(f"\nchatq could not start: {exc}", file=sys.stderr)
        return 1
    finally:
        stack.stop()


def _interrupt(*_: object) -> None:
    raise KeyboardInterrupt


def _start(stack: Stack, data_dir: Path) -> dict[str, str]:
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
    print("starting worker (queue cpu, loading the demo model)...")
    worker = stack.start_worker("cpu")
    wait_worker(redis_url, "cpu", proc=worker)
    stack.start_flower(FLOWER_PORT, flower_auth)
    stack.start_api(API_PORT)
    return {"redis": redis_url, "mongo": mongo_url, "flower_auth": flower_auth,
            "logs": str(stack.data_dir)}


def _banner(urls: dict[str, str]) -> None:
    api = f"http://127.0.0.1:{API_PORT}"
    print(f"""
chatq is running.
  API        {api}   (docs: {api}/docs)
  readiness  {api}/readyz
  Flower     http://127.0.0.1:{FLOWER_PORT}   (basic auth {urls['flower_auth']})
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

Ctrl-C stops everything.
""", flush=True)


if __name__ == "__main__":
    raise SystemExit(main())
