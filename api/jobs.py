"""Reading jobs back: the caller's view of a job (queue position, output so far),
waiting for it to end, cancelling it, and its event stream.

Every state change is a :mod:`shared.lifecycle` operation run on the API's Redis
(``svc.jobs``). Jobs are made by :mod:`api.admission` alone. What must hold for
the streams: every token once and in order, however late a stream joins or
however often Redis restarts under it (:func:`iterate_events`, :func:`patiently`).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable

import anyio
from redis.exceptions import RedisError

from api import webhooks
from api.services import Services
from api.streams import Event, EventMerger
from shared.errors import Gone, NotFound, Unavailable
from shared.events import KeepaliveEvent, LogprobEntry, StatusEvent, TokenEvent, is_terminal
from shared.lifecycle import Cancelled, JobRecord
from shared.schemas import Job, JobStatus
from shared.views import job_view

log = logging.getLogger(__name__)


async def fetch(svc: Services, job_id: str, tenant: str) -> tuple[JobRecord, str]:
    try:
        loaded = await svc.jobs(svc.jobs.ops.load(job_id))
    except RedisError as exc:
        raise Unavailable("Redis is unreachable") from exc
    if loaded.gone:
        raise Gone(f"job {job_id} has expired: results are kept for "
                   f"{svc.settings.jobs.retention_s} s")
    if loaded.record is None or loaded.record.tenant != tenant:
        raise NotFound(f"no job {job_id!r}")
    return loaded.record, loaded.output


async def cancel(svc: Services, record: JobRecord) -> Cancelled:
    """A queued job ends now (it never runs); a running one stops between tokens."""
    return await svc.jobs(svc.jobs.ops.cancel(record))


async def view(svc: Services, record: JobRecord, output: str) -> Job:
    position = None
    if record.status is JobStatus.queued:
        position = await svc.jobs(svc.jobs.ops.position(record))
    hooks = await webhooks.job_deliveries(svc, record.id) if record.webhook else None
    logprobs = await answer_logprobs(svc, record)
    return job_view(record, output, position, hooks,
                    None if logprobs is None else [e.model_dump() for e in logprobs])


async def answer_logprobs(svc: Services, record: JobRecord) -> list[LogprobEntry] | None:
    """The logprobs of the answer's tokens so far, from its token events (None: not
    asked for)."""
    if not record.params.logprobs:
        return None
    events = await read_log(svc, record.id)
    return [e for ev in events if isinstance(ev, TokenEvent) for e in ev.logprobs or []]


async def final(svc: Services, job_id: str, tenant: str) -> tuple[JobRecord, str]:
    """A finished job as its streams end with it: read once per process however many
    streams end together (a finished job does not change), retried through a Redis
    outage so a stream is never cut for it."""
    async def load() -> tuple[JobRecord, str]:
        return await patiently(svc, lambda: fetch(svc, job_id, tenant))

    record, output = await svc.finals.get(job_id, load)
    if record.tenant != tenant:
        raise NotFound(f"no job {job_id!r}")
    return record, output


async def patiently[T](svc: Services, read: Callable[[], Awaitable[T]]) -> T:
    """``read()``, retried while Redis is unreachable, up to ``api.stream_patience_s``
    (a stream outlives a Redis restart; a request would rather answer 503 at once)."""
    deadline = time.monotonic() + svc.settings.api.stream_patience_s
    delay = 0.1
    while True:
        try:
            return await read()
        except Unavailable:
            if time.monotonic() + delay > deadline:
                raise
            log.info("Redis unreachable; a stream waits for it", extra={"retry_s": delay})
            await asyncio.sleep(delay)
            delay = min(delay * 2, 2.0)


async def wait_terminal(svc: Services, job_id: str, tenant: str,
                        timeout: float) -> tuple[JobRecord, str]:
    """The job once it is finished, or as it is when ``timeout`` seconds have passed.

    Event-driven: it wakes on the job's status events (or a hub reconnect), not by polling.
    The job is read after the subscription is confirmed, so an end between the two is seen.
    """
    with anyio.move_on_after(timeout):
        async with svc.hub.subscribe(job_id) as events:
            while True:
                record, output = await fetch(svc, job_id, tenant)
                if record.status.terminal:
                    return record, output
                while not _ends(await events.get()):
                    pass
    return await fetch(svc, job_id, tenant)


def _ends(batch: list[Event] | None) -> bool:
    """True for a batch holding a terminal status, or for a hub resync marker (None)."""
    return batch is None or any(is_terminal(e) for e in batch)


def joined(events: list[Event]) -> list[Event]:
    """Runs of token events as one each: the text joined, the logprobs in order, the
    last ``seq``. What the worker sent in one batch then costs one chunk, not one per
    token, for a client that does not resume by ``seq`` (the OpenAI streams)."""
    out: list[Event] = []
    run: list[TokenEvent] = []
    for event in [*events, None]:  # None closes the last run
        if isinstance(event, TokenEvent):
            run.append(event)
            continue
        if len(run) > 1:
            logprobs = (None if all(t.logprobs is None for t in run)
                        else [e for t in run for e in t.logprobs or []])
            out.append(TokenEvent(seq=run[-1].seq, text="".join(t.text for t in run),
                                  logprobs=logprobs))
        else:
            out.extend(run)
        run = []
        if event is not None:
            out.append(event)
    return out


async def iterate_events(svc: Services, record: JobRecord, last_seq: int = 0, *,
                         join_tokens: bool = False) -> AsyncIterator[Event]:
    """The job's events after ``last_seq``: tokens once each and in order, status changes,
    keepalives while idle; ends after the terminal status. ``join_tokens``: the tokens
    that arrive together as one event (:func:`joined`)."""
    merger = EventMerger(last_seq)
    keepalive = svc.settings.api.sse_keepalive_s
    async with svc.hub.subscribe(record.id) as queue:
        if not record.status.terminal:
            merger.statuses.add(record.status)
            yield StatusEvent(status=record.status)
        pending: list[Event] | None = None  # None: read the replay log
        while True:
            if pending is None:
                pending = await _replay(svc, record)
            fresh = merger.fresh(pending)
            for event in joined(fresh) if join_tokens else fresh:
                yield event
                if is_terminal(event):
                    return
            try:
                pending = await asyncio.wait_for(queue.get(), keepalive)
            except TimeoutError:
                pending = []
                yield KeepaliveEvent()


async def read_log(svc: Services, job_id: str) -> list[Event]:
    """The job's replay log (its token events, with their logprobs)."""
    return await _read_log(svc, job_id)


async def _read_log(svc: Services, job_id: str) -> list[Event]:
    try:
        return list(await svc.jobs(svc.jobs.ops.read_log(job_id)))
    except RedisError as exc:
        raise Unavailable("Redis is unreachable") from exc


async def _replay(svc: Services, record: JobRecord) -> list[Event]:
    """The replay log; for a job that had already ended, closed by its terminal status."""
    logged = await patiently(svc, lambda: _read_log(svc, record.id))
    if record.status.terminal and not any(is_terminal(e) for e in logged):
        logged.append(StatusEvent(status=record.status))
    return logged
