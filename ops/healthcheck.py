"""Container healthchecks (no curl in the images):

    python -m ops.healthcheck http URL    # healthy when URL answers 2xx
    python -m ops.healthcheck worker      # healthy when this host's worker sent a fresh heartbeat

The worker check reads the heartbeats the pool child writes to Redis (see
workers/runtime.py), so it turns healthy only once the model is loaded.
"""

from __future__ import annotations

import socket
import sys
import time
import urllib.request

import redis

from shared.keys import Keys
from shared.settings import load_settings


def http_ok(url: str) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=4) as response:
            return 200 <= int(response.status) < 300
    except OSError:
        return False


def worker_alive(hostname: str | None = None) -> bool:
    settings = load_settings()
    keys = Keys(settings.key_prefix)
    hostname = hostname or socket.gethostname()
    client = redis.Redis.from_url(settings.redis_url, decode_responses=True,
                                  socket_connect_timeout=3, socket_timeout=3)
    try:
        ids: list[str] = client.zrangebyscore(  # type: ignore[assignment]
            keys.workers(), time.time() - settings.worker.heartbeat_ttl_s, "+inf")
        for worker_id in ids:
            beat: dict[str, str] = client.hgetall(keys.worker(worker_id))  # type: ignore[assignment]
            if beat.get("hostname") == hostname and beat.get("queue") == settings.worker.queue:
                return True
        return False
    except redis.RedisError:
        return False
    finally:
        client.close()


def main(argv: list[str]) -> int:
    if argv[:1] == ["http"] and len(argv) == 2:
        return 0 if http_ok(argv[1]) else 1
    if argv == ["worker"]:
        return 0 if worker_alive() else 1
    print(__doc__, file=sys.stderr)
    return 2


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
