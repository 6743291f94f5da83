"""Fan-out of job events from Redis pub/sub to this process's stream clients.

One pub/sub connection per API process, whatever the number of clients, and on
it only the channels of the jobs this process's clients follow: the first local
subscriber of a job SUBSCRIBEs its channel, the last to leave UNSUBSCRIBEs it. So
with R API replicas each receives its own clients' events, not R copies of all
traffic (``stats.messages`` counts what it receives; ``/metrics`` shows it).

Why no gap and no duplicate for a late joiner: the worker appends each event to
the job's replay log and publishes it in the same Redis transaction. A client is
handed its queue only once Redis has confirmed the channel's subscription on the
hub's connection; it then reads the log. An event published before the
confirmation is in the log; one published after is delivered to the queue; one
in both is dropped by sequence number (tokens) or by state (status events) in
:class:`EventMerger`.

What keeps a confirmation unambiguous: for each channel at most one SUBSCRIBE is
in flight on a connection, and an UNSUBSCRIBE is sent only once it is confirmed
(a subscriber who leaves before that leaves the channel to be unsubscribed on
its confirmation). Every command goes through one FIFO, in the order the state
changed. A connection that breaks is dropped whole (its client does not
reconnect behind the hub's back: no retries, no health-check PINGs that would
read a reply meant for the listener); the next one subscribes every channel
still followed, and on each confirmation the subscribers already reading get a
``None`` marker meaning "re-read the log", so nothing sent meanwhile is lost.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass

import redis.asyncio as aredis
from pydantic import ValidationError
from redis.asyncio.client import PubSub

from shared.errors import Unavailable
from shared.events import StatusEvent, StreamEventT, TokenEvent, parse_batch
from shared.keys import Keys

log = logging.getLogger(__name__)

Event = StreamEventT
Inbox = asyncio.Queue[list[Event] | None]
Command = tuple[str, list[str]]  # SUBSCRIBE | UNSUBSCRIBE, channel names


@dataclass
class HubStats:
    """What this process's hub received and did (counters since start)."""

    messages: int = 0  # pub/sub messages received on job channels
    subscribes: int = 0  # channel subscriptions confirmed
    unsubscribes: int = 0  # UNSUBSCRIBEs sent
    reconnects: int = 0  # pub/sub connections made after the first


class _Channel:
    """One job's channel on the hub's connection and the local queues that follow it."""

    __slots__ = ("attached", "queues", "ready")

    def __init__(self) -> None:
        self.queues: set[Inbox] = set()
        self.attached: set[Inbox] = set()  # handed to their callers (they read the log)
        self.ready = asyncio.Event()  # subscribed, confirmed on the current connection


class StreamHub:
    def __init__(self, client: aredis.Redis, keys: Keys, patience_s: float = 60.0) -> None:
        """``client``: a client of the hub's own, without retries or health checks
        (:func:`api.services.pubsub_redis`); ``patience_s``: how long a subscriber
        waits for an unreachable Redis before :class:`Unavailable`."""
        self.redis = client
        self.keys = keys
        self.patience_s = patience_s
        self.stats = HubStats()
        self._prefix = keys.channel("")
        self._channels: dict[str, _Channel] = {}  # job id -> its channel
        self._outbox: asyncio.Queue[Command] | None = None  # None while disconnected
        self._task: asyncio.Task[None] | None = None

    @property
    def subscriber_count(self) -> int:
        return sum(len(c.queues) for c in self._channels.values())

    @property
    def channel_count(self) -> int:
        """Job channels subscribed now on the hub's connection."""
        return sum(1 for c in self._channels.values() if c.ready.is_set())

    async def start(self) -> None:
        self._task = asyncio.create_task(self._run(), name="chatq-stream-hub")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        await self.redis.aclose()

    @contextlib.asynccontextmanager
    async def subscribe(self, job_id: str) -> AsyncIterator[Inbox]:
        """The job's live events, from the moment the channel's subscription is confirmed
        (read the replay log after entering); ``None`` in the queue: re-read the log."""
        queue: Inbox = asyncio.Queue()
        channel = self._channels.get(job_id)
        if channel is None:
            channel = self._channels[job_id] = _Channel()
            self._command("SUBSCRIBE", job_id)
        channel.queues.add(queue)
        try:
            try:
                await asyncio.wait_for(channel.ready.wait(), self.patience_s)
            except TimeoutError as exc:
                raise Unavailable("Redis pub/sub is unreachable") from exc
            channel.attached.add(queue)
            yield queue
        finally:
            self._leave(job_id, channel, queue)

    def _leave(self, job_id: str, channel: _Channel, queue: Inbox) -> None:
        """Synchronous, so a cancelled stream still leaves (no await in a finally)."""
        channel.queues.discard(queue)
        channel.attached.discard(queue)
        if channel.queues or self._channels.get(job_id) is not channel:
            return
        if channel.ready.is_set():
            del self._channels[job_id]
            self._command("UNSUBSCRIBE", job_id)
        elif self._outbox is None:
            del self._channels[job_id]  # disconnected: the next connection skips it
        # else: its SUBSCRIBE is in flight; the confirmation unsubscribes it

    def _command(self, command: str, *job_ids: str) -> None:
        if self._outbox is not None:  # else the next connection subscribes what is needed
            self._outbox.put_nowait((command, [self.keys.channel(j) for j in job_ids]))
            if command == "UNSUBSCRIBE":
                self.stats.unsubscribes += len(job_ids)

    async def _run(self) -> None:
        first = True
        while True:
            try:
                if not first:
                    self.stats.reconnects += 1
                first = False
                await self._connection()
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                log.warning("stream hub lost its Redis connection; resubscribing",
                            extra={"error": str(exc), "channels": len(self._channels)})
            await asyncio.sleep(0.5)

    async def _connection(self) -> None:
        pubsub = self.redis.pubsub()
        outbox: asyncio.Queue[Command] = asyncio.Queue()
        try:
            await pubsub.execute_command("SUBSCRIBE", self.keys.hub_anchor())
            for job_id in [j for j, c in self._channels.items() if not c.queues]:
                del self._channels[job_id]  # left while disconnected
            self._outbox = outbox  # no await from the pruning to the snapshot below
            if self._channels:
                self._command("SUBSCRIBE", *self._channels)
            async with asyncio.TaskGroup() as group:
                group.create_task(self._send(pubsub, outbox))
                group.create_task(self._receive(pubsub))
        finally:
            self._outbox = None
            for channel in self._channels.values():
                channel.ready.clear()
            await pubsub.aclose()

    @staticmethod
    async def _send(pubsub: PubSub, outbox: asyncio.Queue[Command]) -> None:
        while True:
            command, names = await outbox.get()
            await pubsub.execute_command(command, *names)

    async def _receive(self, pubsub: PubSub) -> None:
        while True:
            response = await pubsub.parse_response(block=True)
            if not isinstance(response, list) or len(response) < 3:
                continue
            kind, name, data = response[0], response[1], response[2]
            if kind == "message":
                self.stats.messages += 1
                self._dispatch(name, data)
            elif kind == "subscribe" and name.startswith(self._prefix):
                self._confirmed(name[len(self._prefix):])

    def _confirmed(self, job_id: str) -> None:
        channel = self._channels.get(job_id)
        if channel is None:
            return
        self.stats.subscribes += 1
        if not channel.queues:  # everyone left while it was in flight
            del self._channels[job_id]
            self._command("UNSUBSCRIBE", job_id)
            return
        channel.ready.set()
        for queue in channel.attached:  # they read the log before this connection
            queue.put_nowait(None)

    def _dispatch(self, name: str, data: str) -> None:
        job_id = name[len(self._prefix):]
        channel = self._channels.get(job_id)
        if channel is None or not channel.queues:
            return  # sent before our UNSUBSCRIBE took effect
        try:
            events = parse_batch(data)  # once per message, however many subscribers
        except ValidationError:
            log.error("unreadable stream event; subscribers re-read the log",
                      extra={"job_id": job_id})
            events = None
        for queue in channel.queues:
            queue.put_nowait(events)


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
