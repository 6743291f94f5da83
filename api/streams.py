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
import json
import logging
from collections.abc import AsyncIterator
from typing import Any

import redis.asyncio as aredis

from shared.keys import Keys

log = logging.getLogger(__name__)

Event = dict[str, Any]


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
        subs = self._subscribers.get(channel[len(self._prefix):])
        if not subs:
            return
        events: list[Event] = json.loads(data)
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
            if event.get("type") == "token":
                if event["seq"] <= self.last_seq:
                    continue
                self.last_seq = event["seq"]
            elif event.get("type") == "status":
                if event["status"] in self.statuses:
                    continue
                self.statuses.add(event["status"])
            out.append(event)
        return out
