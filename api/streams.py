"""Fan-out of job events from Redis pub/sub to this process's stream clients.

One pub/sub connection per API process, whatever the number of clients: it
holds a single pattern subscription to every job channel, made once at
start-up, and hands each message to the local subscribers of that job (others
are dropped without being decoded).

Why no gap and no duplicate for a late joiner: the worker appends each event to
the job's replay log and publishes it in the same Redis transaction. A client
first registers its queue here, then reads the log. An event published before
registration is in the log; one published after is delivered to the queue; one
in both is dropped by sequence number (tokens) or by state (status events) in
:class:`EventMerger`. If the pub/sub connection breaks, every subscriber gets a
``None`` marker meaning "re-read the log", so nothing sent meanwhile is lost.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable

import redis.asyncio as aredis
from pydantic import ValidationError

from shared.events import StatusEvent, StreamEventT, TokenEvent, parse_batch
from shared.keys import Keys

log = logging.getLogger(__name__)

Event = StreamEventT


class StreamHub:
    def __init__(self, client: aredis.Redis, keys: Keys) -> None:
        self.redis = client
        self.keys = keys
        self._prefix = keys.channel("")
        self._subscribers: dict[str, set[asyncio.Queue[list[Event] | None]]] = {}
        self._task: asyncio.Task[None] | None = None

    @property
    def subscriber_count(self) -> int:
        return sum(len(s) for s in self._subscribers.values())

    async def start(self) -> None:
        self._task = asyncio.create_task(self._run(), name="chatq-stream-hub")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task

    @contextlib.asynccontextmanager
    async def subscribe(self, job_id: str) -> AsyncIterator[asyncio.Queue[list[Event] | None]]:
        queue: asyncio.Queue[list[Event] | None] = asyncio.Queue()
        self._subscribers.setdefault(job_id, set()).add(queue)
        try:
            yield queue
        finally:
            subs = self._subscribers.get(job_id)
            if subs is not None:
                subs.discard(queue)
                if not subs:
                    del self._subscribers[job_id]

    async def _run(self) -> None:
        while True:
            try:
                await self._listen()
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                log.warning("stream hub lost its Redis connection; retrying",
                            extra={"error": str(exc)})
            self._broadcast(None)  # subscribers re-read the replay log
            await asyncio.sleep(0.5)

    async def _listen(self) -> None:
        pubsub = self.redis.pubsub(ignore_subscribe_messages=False)
        try:
            await pubsub.psubscribe(self.keys.channel_pattern())
            async for message in pubsub.listen():
                kind = message["type"]
                if kind == "psubscribe":
                    self._broadcast(None)  # anything missed while reconnecting
                elif kind == "pmessage":
                    self._dispatch(message["channel"], message["data"])
        finally:
            await pubsub.aclose()

    def _dispatch(self, channel: str, data: str) -> None:
        job_id = channel[len(self._prefix):]
        subs = self._subscribers.get(job_id)
        if not subs:
            return
        try:
            events = parse_batch(data)  # once per message, however many subscribers
        except ValidationError:
            log.error("unreadable stream event; subscribers re-read the log",
                      extra={"job_id": job_id})
            events = None
        for queue in subs:
            queue.put_nowait(events)

    def _broadcast(self, item: None) -> None:
        for subs in self._subscribers.values():
            for queue in subs:
                queue.put_nowait(item)


class EventMerger:
    """Drops events a client already has: tokens by ``seq``, status by state."""

    def __init__(self, last_seq: int = 0) -> None:
        self.last_seq = last_seq
        self.statuses: set[str] = set()

    def fresh(self, events: list[Event]) -> list[Event]:
        out = []
        for event in events:
            if isinstance(event, TokenEvent):
                if event.seq <= self.last_seq:
                    continue
                self.last_seq = event.seq
            elif isinstance(event, StatusEvent):
                if event.status in self.statuses:
                    continue
                self.statuses.add(event.status)
            out.append(event)
        return out


class FinalViews[T]:
    """Single-flight, short-lived cache of finished jobs, keyed by job id.

    Concurrent callers for one job share one read; the result is kept for
    ``ttl_s`` (a finished job does not change), at most ``size`` entries.
    A failed read is not kept.
    """

    def __init__(self, ttl_s: float = 30.0, size: int = 4096) -> None:
        self.ttl_s = ttl_s
        self.size = size
        self._entries: dict[str, tuple[float, asyncio.Future[T]]] = {}

    async def get(self, key: str, load: Callable[[], Awaitable[T]]) -> T:
        now = time.monotonic()
        entry = self._entries.get(key)
        if entry is None or entry[0] < now:
            self._evict(now)
            entry = (now + self.ttl_s, asyncio.ensure_future(load()))
            self._entries[key] = entry
        try:
            return await asyncio.shield(entry[1])
        except Exception:
            if self._entries.get(key) is entry:
                del self._entries[key]
            raise

    def _evict(self, now: float) -> None:
        for key in [k for k, (expires, _) in self._entries.items() if expires < now]:
            del self._entries[key]
        while len(self._entries) >= self.size:
            del self._entries[next(iter(self._entries))]
