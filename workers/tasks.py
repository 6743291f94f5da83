"""Running one job: start it, generate, stream, finish it with usage and timings."""

from __future__ import annotations

import logging
import time
from typing import Any

from celery.exceptions import SoftTimeLimitExceeded

from shared.conversations import TurnWrite
from shared.jobstore import JobRecord
from shared.schemas import JobStatus, SamplingParams
from workers.emitter import TokenEmitter
from workers.engine import Outcome
from workers.history import PromptPlan, plan_prompt
from workers.runtime import Runtime

log = logging.getLogger(__name__)


def run_job(rt: Runtime, job_id: str) -> None:
    loaded = rt.store.load(job_id)
    if loaded is None:
        log.warning("job record gone; skipping", extra={"job_id": job_id})
        return
    record, output = loaded
    ctx = {"job_id": job_id, "queue": record.queue, "model": record.model}
    verdict, detail = rt.store.start(record, rt.settings.celery.max_attempts)
    if verdict in ("missing", "terminal"):
        log.info("job not runnable; skipping", extra={**ctx, "verdict": verdict, "status": detail})
        return
    if verdict == "exhausted":
        log.error("job delivered too often; failing", extra={**ctx, "attempts": detail})
        rt.store.finish(record, JobStatus.failed, error={
            "code": "worker_lost",
            "message": f"the worker died while running this job ({int(detail) - 1} attempts)",
        })
        return
    record.attempts = int(detail)
    record.started_at = record.started_at or time.time()
    rt.heartbeat.current_job = job_id
    try:
        _generate(rt, record, output, ctx)
    finally:
        rt.heartbeat.current_job = ""
        rt.heartbeat.jobs_done += 1


def _generate(rt: Runtime, record: JobRecord, output: str, ctx: dict[str, Any]) -> None:
    attempt_started = time.monotonic()
    plan = _plan(rt, record, ctx)
    if plan is None:
        return
    prompt = plan.prompt
    tokens = list(prompt.tokens)
    if output:  # a redelivered job continues after the text already streamed
        tokens += rt.engine.llm.tokenize(output.encode(), add_bos=False, special=False)
    params = record.params
    remaining = SamplingParams.model_validate(
        {**params.model_dump(), "max_tokens": max(params.max_tokens - record.completion_tokens, 0)}
    )
    emitter = TokenEmitter(rt.store, record, rt.settings.jobs.coalesce_ms / 1000)
    outcome = Outcome()
    status, error = JobStatus.succeeded, None
    log.info("job started", extra={**ctx, "attempt": record.attempts,
                                   "prompt_tokens": len(prompt.tokens)})
    try:
        for piece in rt.engine.generate(tokens, remaining, [*params.stop, *prompt.stop], outcome):
            if emitter.add(piece):
                status, outcome.finish_reason = JobStatus.cancelled, "cancelled"
                break
    except SoftTimeLimitExceeded:
        status, outcome.finish_reason = JobStatus.failed, "timeout"
        error = {"code": "timeout", "message": "generation exceeded the job time limit"}
    except Exception as exc:
        log.exception("generation failed", extra=ctx)
        status, outcome.finish_reason = JobStatus.failed, "error"
        error = {"code": "generation_error", "message": str(exc)}
    finally:
        emitter.flush()  # a cancel seen only here came after the last token: keep the answer
    succeeded = status is JobStatus.succeeded
    answer = rt.store.output(record.id) if succeeded else ""  # what the clients saw
    persisted = _persist(rt, record, plan, answer) if succeeded else None
    finished = time.time()
    rt.store.finish(
        record, status, error=error, finish_reason=outcome.finish_reason,
        # Only true is written here: a parked write already set false, and the
        # outbox drainer may have flipped it to true since.
        persisted=True if persisted else None, history_messages=plan.history_used,
        history_trimmed=plan.history_trimmed,
        prompt_tokens=len(prompt.tokens),
        usage={"prompt_tokens": len(prompt.tokens),
               "completion_tokens": emitter.completion_tokens,
               "total_tokens": len(prompt.tokens) + emitter.completion_tokens},
        timings=_timings(record, emitter, attempt_started, finished),
    )
    log.info("job finished", extra={**ctx, "status": status.value,
                                    "finish_reason": outcome.finish_reason,
                                    "completion_tokens": emitter.completion_tokens})


def _plan(rt: Runtime, record: JobRecord, ctx: dict[str, Any]) -> PromptPlan | None:
    """The job's prompt, or None after failing the job when it cannot be built
    (e.g. the model's chat template refuses the messages' roles)."""
    try:
        return plan_prompt(rt.conversations, rt.engine.renderer, rt.spec.context_size,
                           record, ctx)
    except Exception as exc:
        log.exception("prompt could not be built", extra=ctx)
        rt.store.finish(record, JobStatus.failed, finish_reason="error",
                        error={"code": "prompt_error", "message": str(exc)})
        return None


def _persist(rt: Runtime, record: JobRecord, plan: PromptPlan, answer: str) -> bool | None:
    """Append the request's turn and the answer to the conversation, exactly once.

    Done before the job is marked finished, so its final state says whether the
    write landed (``persisted``) or waits in the outbox.
    """
    if not record.conversation_id:
        return None
    write = TurnWrite(
        conversation_id=record.conversation_id, tenant=record.tenant, job_id=record.id,
        at=record.created_at, messages=[*plan.turn, {"role": "assistant", "content": answer}],
        user_id=record.user_id, persona=record.persona, written_at=time.time(),
    )
    return rt.persister.persist(write)


def _timings(
    record: JobRecord, emitter: TokenEmitter, attempt_started: float, finished: float
) -> dict[str, float | None]:
    """queue wait, time to first token, duration and decode rate, in ms and tokens/s."""
    started_at = record.started_at or finished
    ttft = None
    rate = None
    if emitter.first_token_at is not None:
        ttft = (emitter.first_token_at - attempt_started) * 1000
        decode_s = (emitter.last_token_at or emitter.first_token_at) - emitter.first_token_at
        new_tokens = emitter.completion_tokens - record.completion_tokens
        if decode_s > 0 and new_tokens > 1:
            rate = (new_tokens - 1) / decode_s
    return {
        "queue_wait_ms": round((started_at - record.created_at) * 1000, 3),
        "ttft_ms": None if ttft is None else round(ttft, 3),
        "duration_ms": round((finished - started_at) * 1000, 3),
        "tokens_per_s": None if rate is None else round(rate, 2),
    }
