"""Container healthchecks (no curl in the images):

    python -m ops.healthcheck http URL    # healthy when URL answers 2xx
    python -m ops.healthcheck worker      # healthy when this host's worker sent a fresh heartbeat
    python -m ops.healthcheck webhooks    # healthy when this host's webhook worker reads the
                                          # transition log (its beat is fresh)

The worker check reads the heartbeats the pool child writes to Redis (see
workers/runtime.py), so it turns healthy only once the model is loaded.
"""

from __future__ import annotations

import socket
import sys
import urllib.request

import redis

from shared.lifecycle import BlockingJobs, store_config
from shared.redis_conn import blocking_client
from shared.settings import load_settings


def http_ok(url: str) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=4) as response:
            return 200 <= int(response.status) < 300
    except OSError:
        return False


def worker_alive(hostname: str | None = None) -> bool:
    settings = load_settings()
    hostname = hostname or socket.gethostname()
    client = blocking_client(settings.redis_url, decode_responses=True,
                                  socket_connect_timeout=3, socket_timeout=3)
    jobs = BlockingJobs(client, store_config(settings))
    try:
        live = jobs(jobs.ops.live_workers(settings.worker.heartbeat_ttl_s))
        return any(beat.get("hostname") == hostname
                   and beat.get("queue") == settings.worker.queue for beat in live)
    except redis.RedisError:
        return False
    finally:
        client.close()


def webhooks_alive(hostname: str | None = None) -> bool:
    settings = load_settings()
    keys = store_config(settings).keys
    client = blocking_client(settings.redis_url, decode_responses=True,
                                  socket_connect_timeout=3, socket_timeout=3)
    pattern = keys.webhook_worker(f"webhooks@{hostname or socket.gethostname()}:*")
    try:
        return any(True for _ in client.scan_iter(pattern))
    except redis.RedisError:
        return False
    finally:
        client.close()


def main(argv: list[str]) -> int:
    if argv[:1] == ["http"] and len(argv) == 2:
        return 0 if http_ok(argv[1]) else 1
    if argv == ["worker"]:
        return 0 if worker_alive() else 1
    if argv == ["webhooks"]:
        return 0 if webhooks_alive() else 1
    print(__doc__, file=sys.stderr)
    return 2


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
