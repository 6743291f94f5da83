"""Submitting jobs and reading them back: the logic behind every job-shaped route."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterator
from typing import Any

import anyio
from redis.exceptions import RedisError

from api import conversations
from api.services import Services
from api.streams import EventMerger
from shared.conversations import new_conversation_id
from shared.errors import (
    ContextOverflow,
    Gone,
    NotFound,
    QueueFull,
    Unavailable,
    UnknownModel,
)
from shared.jobstore import JobRecord, new_job_id
from shared.personas import persona_turns
from shared.registry import ModelSpec
from shared.schemas import Job, JobRequest, JobStatus, SamplingParams, utc

log = logging.getLogger(__name__)

RETRY_AFTER_FULL_S = 5


def resolve_model(svc: Services, name: str | None) -> ModelSpec:
    spec = svc.registry.get(name)
    if spec is None:
        known = svc.registry.names
        raise UnknownModel(f"unknown model {name!r}; known models: {', '.join(known)}",
                           details={"models": known})
    return spec


def sampling(spec: ModelSpec, req: JobRequest) -> SamplingParams:
    d = spec.defaults
    return SamplingParams(
        max_tokens=req.max_tokens or d.max_tokens,
        temperature=d.temperature if req.temperature is None else req.temperature,
        top_p=req.top_p or d.top_p,
        stop=req.stop_list(),
        seed=req.seed,
    )


async def check_context(svc: Services, spec: ModelSpec, messages: list[dict[str, str]],
                        max_tokens: int) -> int:
    """Count the prompt with the model's tokenizer; 400 when it cannot fit with max_tokens."""
    prompt_tokens = await svc.tokens.count(spec, messages)
    if prompt_tokens + max_tokens > spec.context_size:
        raise ContextOverflow(
            f"prompt ({prompt_tokens} tokens) + max_tokens ({max_tokens}) exceeds the "
            f"context of {spec.name} ({spec.context_size} tokens)",
            details={"prompt_tokens": prompt_tokens, "max_tokens": max_tokens,
                     "context_size": spec.context_size},
        )
    return prompt_tokens


async def submit(svc: Services, req: JobRequest, tenant: str) -> JobRecord:
    """Admit and enqueue a job. Nothing is left behind when it cannot be queued."""
    spec = resolve_model(svc, req.model)
    params = sampling(spec, req)
    messages = [m.model_dump() for m in req.messages]
    # Count what the worker will render at least: persona head + this request's turns
    # (stored history is trimmed by the worker to fit).
    head = persona_turns(req.persona, [m["content"] for m in messages if m["role"] == "system"])
    await check_context(svc, spec, head + [m for m in messages if m["role"] != "system"],
                        params.max_tokens)
    await svc.require_worker(spec.queue)
    if req.conversation_id:
        await conversations.check_owner(svc, req.conversation_id, tenant)
    record = JobRecord(
        id=new_job_id(), status=JobStatus.queued, model=spec.name, queue=spec.queue,
        tenant=tenant, params=params, messages=messages, created_at=time.time(),
        conversation_id=req.conversation_id or new_conversation_id(),
        persona=req.persona.model_dump() if req.persona else None, metadata=req.metadata,
        user_id=req.user_id,
    )
    try:
        place = await svc.store.create(record)
    except RedisError as exc:
        raise Unavailable(f"Redis is unreachable; the job was not accepted ({exc})") from exc
    if place is None:
        limit = svc.settings.api.max_queue_depth
        raise QueueFull(f"queue {spec.queue!r} is full ({limit} jobs waiting); retry later",
                        details={"queue": spec.queue, "limit": limit},
                        headers={"Retry-After": str(RETRY_AFTER_FULL_S)})
    try:
        await svc.enqueuer.send(record.id, spec.queue)
    except Exception as exc:
        try:
            await svc.store.discard(record)
        except RedisError:
            log.warning("could not discard unqueued job", extra={"job_id": record.id})
        raise Unavailable(f"the broker is unreachable; the job was not accepted ({exc})") from exc
    log.info("job queued", extra={"job_id": record.id, "queue": spec.queue, "model": spec.name,
                                  "tenant": tenant})
    return record


async def fetch(svc: Services, job_id: str, tenant: str) -> tuple[JobRecord, str]:
    try:
        got = await svc.store.get(job_id)
        expired = got is None and await svc.store.expired(job_id)
    except RedisError as exc:
        raise Unavailable(f"Redis is unreachable ({exc})") from exc
    if expired:
        raise Gone(f"job {job_id} has expired: results are kept for "
                   f"{svc.settings.jobs.retention_s} s")
    if got is None or got[0].tenant != tenant:
        raise NotFound(f"no job {job_id!r}")
    return got


async def view(svc: Services, record: JobRecord, output: str) -> Job:
    position = await svc.store.position(record) if record.status is JobStatus.queued else None
    return Job(
        id=record.id, status=record.status, model=record.model, queue=record.queue,
        position=position, output=output, finish_reason=record.finish_reason,
        usage=record.usage, timings=record.timings or {}, error=record.error,
        attempts=record.attempts, conversation_id=record.conversation_id,
        persisted=record.persisted, history_messages=record.history_messages,
        history_trimmed=record.history_trimmed,
        metadata=record.metadata, created_at=record.created_at,
        started_at=utc(record.started_at), finished_at=utc(record.finished_at),
    )


async def wait_terminal(svc: Services, job_id: str, tenant: str,
                        timeout: float) -> tuple[JobRecord, str]:
    """The job once it is finished, or as it is when ``timeout`` seconds have passed.

    Event-driven: it wakes on the job's status events (or a hub reconnect), not by polling.
    """
    async with svc.hub.subscribe(job_id) as events:
        with anyio.move_on_after(timeout):
            while True:
                record, output = await fetch(svc, job_id, tenant)
                if record.status.terminal:
                    return record, output
                while not _ends(await events.get()):
                    pass
    return await fetch(svc, job_id, tenant)


def _ends(events: list[dict[str, Any]] | None) -> bool:
    """True for a batch holding a terminal status, or for a hub resync marker (None)."""
    return events is None or _has_terminal(events)


async def iterate_events(
    svc: Services, record: JobRecord, last_seq: int = 0
) -> AsyncIterator[dict[str, Any]]:
    """The job's events after ``last_seq``: tokens once each and in order, status changes,
    ``keepalive`` markers while idle; ends after the terminal status."""
    merger = EventMerger(last_seq)
    keepalive = svc.settings.api.sse_keepalive_s
    async with svc.hub.subscribe(record.id) as queue:
        if not record.status.terminal:
            merger.statuses.add(record.status.value)
            yield {"type": "status", "status": record.status.value}
        pending: list[dict[str, Any]] | None = None  # None: read the replay log
        while True:
            if pending is None:
                pending = await svc.store.read_log(record.id)
                if record.status.terminal and not _has_terminal(pending):
                    pending.append({"type": "status", "status": record.status.value})
            for event in merger.fresh(pending):
                yield event
                if event["type"] == "status" and JobStatus(event["status"]).terminal:
                    return
            try:
                pending = await asyncio.wait_for(queue.get(), keepalive)
            except TimeoutError:
                pending = []
                yield {"type": "keepalive"}


def _has_terminal(events: list[dict[str, Any]]) -> bool:
    return any(e.get("type") == "status" and JobStatus(e["status"]).terminal for e in events)
