"""Submitting jobs and reading them back: the logic behind every job-shaped route."""

from __future__ import annotations

import logging
import time

import anyio
from redis.exceptions import RedisError

from api import conversations
from api.services import Services
from shared.conversations import new_conversation_id
from shared.errors import Gone, NotFound, Unavailable, UnknownModel
from shared.jobstore import JobRecord, new_job_id
from shared.registry import ModelSpec
from shared.schemas import Job, JobRequest, JobStatus, SamplingParams, utc

log = logging.getLogger(__name__)


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


async def submit(svc: Services, req: JobRequest, tenant: str) -> JobRecord:
    """Admit and enqueue a job. Nothing is left behind when it cannot be queued."""
    spec = resolve_model(svc, req.model)
    await svc.require_worker(spec.queue)
    if req.conversation_id:
        await conversations.check_owner(svc, req.conversation_id, tenant)
    record = JobRecord(
        id=new_job_id(), status=JobStatus.queued, model=spec.name, queue=spec.queue,
        tenant=tenant, params=sampling(spec, req),
        messages=[m.model_dump() for m in req.messages], created_at=time.time(),
        conversation_id=req.conversation_id or new_conversation_id(),
        persona=req.persona.model_dump() if req.persona else None, metadata=req.metadata,
        user_id=req.user_id,
    )
    try:
        await svc.store.create(record)
    except RedisError as exc:
        raise Unavailable(f"Redis is unreachable; the job was not accepted ({exc})") from exc
    try:
        await svc.enqueuer.send(record.id, spec.queue)
    except Exception as exc:
        try:
            await svc.store.discard(record)
        except RedisError:
            log.warning("could not discard unqueued job", extra={"job_id": record.id})
        raise Unavailable(f"the broker is unreachable; the job was not accepted ({exc})") from exc
    log.info("job queued", extra={"job_id": record.id, "queue": spec.queue, "model": spec.name})
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
    """The job once it is finished, or as it is when ``timeout`` seconds have passed."""
    deadline = time.monotonic() + timeout
    while True:
        record, output = await fetch(svc, job_id, tenant)
        if record.status.terminal or time.monotonic() >= deadline:
            return record, output
        await anyio.sleep(min(0.05, max(deadline - time.monotonic(), 0)))
