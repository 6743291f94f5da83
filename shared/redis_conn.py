"""Redis connections from a URL, plain or through Redis Sentinel, for every process.

``CHATQ_REDIS_URL`` (and ``CHATQ_CELERY__BROKER_URL``) take either a plain
``redis://[:password@]host:port/db`` or, for a Redis that fails over, the Sentinels:

    redis+sentinel://[:password@]host1:26379,host2:26379,host3:26379/MASTER/DB

(``MASTER``: the name the Sentinels monitor; ``password``: the Redis servers' own, also sent
to the Sentinels). Every client asks the Sentinels for the current master and asks again when
a connection to it fails, so after a failover the job store, the pub/sub, the recovery
sweeper, the webhook worker and Celery (kombu's ``sentinel://`` transport, built by
:func:`celery_broker`) all follow the new master.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any
from urllib.parse import unquote, urlsplit

import redis
import redis.asyncio as aredis
from redis.asyncio.sentinel import Sentinel as AsyncSentinel
from redis.sentinel import Sentinel

SCHEME = "redis+sentinel"


@dataclass(frozen=True)
class SentinelTarget:
    hosts: list[tuple[str, int]]
    master: str
    db: int = 0
    password: str | None = None

    @classmethod
    def parse(cls, url: str) -> SentinelTarget | None:
        """The Sentinels a ``redis+sentinel://`` URL names; None for any other URL."""
        parts = urlsplit(url)
        if parts.scheme != SCHEME:
            return None
        _, _, hostlist = parts.netloc.rpartition("@")
        password = unquote(parts.password) if parts.password else None
        hosts = []
        for item in hostlist.split(","):
            host, _, port = item.strip().rpartition(":")
            if not host or not port.isdigit():
                raise ValueError(f"{SCHEME} URL: expected host:port, got {item!r}")
            hosts.append((host.strip("[]"), int(port)))
        path = [p for p in parts.path.split("/") if p]
        if not path:
            raise ValueError(f"{SCHEME} URL: the master's name is missing "
                             f"({SCHEME}://host:26379,host2:26379/MASTER/DB)")
        db = int(path[1]) if len(path) > 1 else 0
        return cls(hosts, path[0], db, password)

    def _sentinel_kwargs(self) -> dict[str, Any]:
        return {"password": self.password} if self.password else {}


def blocking_client(url: str, **kwargs: Any) -> redis.Redis:
    """A redis-py client for ``url`` (``kwargs`` as ``Redis.from_url`` takes them)."""
    target = SentinelTarget.parse(url)
    if target is None:
        return redis.Redis.from_url(url, **kwargs)
    sentinel = Sentinel(target.hosts, sentinel_kwargs=target._sentinel_kwargs(),
                        socket_timeout=kwargs.get("socket_connect_timeout", 2))
    return sentinel.master_for(target.master, db=target.db, password=target.password,
                               **kwargs)


def async_client(url: str, max_connections: int | None = None, **kwargs: Any) -> aredis.Redis:
    """An asyncio client for ``url``. A plain URL gets a bounded blocking pool (a request
    waits for a free connection); through Sentinel, the master's own pool."""
    target = SentinelTarget.parse(url)
    if target is None:
        wait = kwargs.pop("pool_timeout", None)
        pool = aredis.BlockingConnectionPool.from_url(
            url, max_connections=max_connections or 50, timeout=wait, **kwargs)
        return aredis.Redis(connection_pool=pool)
    kwargs.pop("pool_timeout", None)
    sentinel = AsyncSentinel(target.hosts, sentinel_kwargs=target._sentinel_kwargs(),
                             socket_timeout=kwargs.get("socket_connect_timeout", 2))
    return sentinel.master_for(target.master, db=target.db, password=target.password,
                               max_connections=max_connections, **kwargs)


def celery_broker(url: str) -> tuple[str, dict[str, Any]]:
    """Celery's broker URL for ``url`` and the transport options it needs (kombu's
    ``sentinel://`` transport wants one URL per Sentinel and the master's name)."""
    target = SentinelTarget.parse(url)
    if target is None:
        return url, {}
    auth = f":{target.password}@" if target.password else ""
    broker = ";".join(f"sentinel://{auth}{host}:{port}/{target.db}"
                      for host, port in target.hosts)
    options: dict[str, Any] = {"master_name": target.master}
    if target.password:
        options["sentinel_kwargs"] = {"password": target.password}
    return broker, options
