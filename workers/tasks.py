"""Running one job: start it, build its prompt, generate through the engine, stream,
finish it with usage and timings. A ``completion`` job's prompt is its text as it is
(no template, no conversation); an ``embedding`` job is not generated at all: its
texts go to ``Engine.embed`` and its vectors to the job's ``result``.

Every state change goes through :mod:`shared.lifecycle`; the engine is whatever
:class:`workers.engine.Engine` the worker holds. One call runs in one thread of
Celery's thread pool; up to ``slots`` run at once and the engine batches them.
The worker enforces each job's deadline itself (the thread pool has no Celery
time limits): the earlier of the job time limit (``soft_time_limit_s`` from its
start) and the caller's ``cancel_after`` (``cancel_at`` on the record); a job
over it ends ``failed`` with ``timeout``, partial output kept.
"""

from __future__ import annotations

import logging
import time
from typing import Any, Protocol

import redis

from shared import affinity, answers, vectors
from shared.conversations import TurnWrite, WorkerConversationStore
from shared.lifecycle import BlockingJobs, Emitted, JobRecord, new_lease
from shared.prompting import PromptRenderer
from shared.schemas import JobKind, JobStatus, SamplingParams
from shared.settings import Settings
from shared.tools import ToolSet, parse_calls
from workers.emitter import TokenEmitter
from workers.engine import EmbeddingError, Engine, Generation, GenRequest, Outcome
from workers.history import PromptPlan, plan_prompt

log = logging.getLogger(__name__)

POLL_S = 0.25  # how often a job with nothing new to send looks at its cancel flag


class Tracker(Protocol):
    def track(self, job_id: str) -> None: ...
    def untrack(self, job_id: str) -> None: ...


class Persists(Protocol):
    def persist(self, write: TurnWrite) -> bool: ...


class Cancels(Protocol):
    def watch(self, job_id: str, generation: Generation) -> None: ...
    def forget(self, job_id: str) -> None: ...


class Worker(Protocol):
    """What a job needs of the process it runs in (:class:`workers.runtime.Runtime`)."""

    settings: Settings
    worker_id: str
    jobs: BlockingJobs
    engine: Engine
    conversations: WorkerConversationStore

    @property
    def persister(self) -> Persists: ...

    @property
    def heartbeat(self) -> Tracker: ...

    @property
    def cancels(self) -> Cancels: ...


def run_job(w: Worker, job_id: str, dispatch: int = 1) -> None:
    loaded = w.jobs(w.jobs.ops.load(job_id))
    record = loaded.record
    if record is None:
        log.warning("job record gone; skipping", extra={"job_id": job_id})
        return
    ctx = {"job_id": job_id, "queue": record.queue, "model": record.model,
           "dispatch": dispatch}
    lease = new_lease()
    started = w.jobs(w.jobs.ops.start(job_id, record.queue, dispatch, w.worker_id, lease))
    if started.verdict != "run":
        log.info("job not runnable; skipping", extra={**ctx, "verdict": started.verdict,
                                                      "detail": started.detail})
        return
    record.attempts = started.attempt
    record.lease = lease
    record.started_at = record.started_at or time.time()
    w.heartbeat.track(job_id)
    try:
        if record.kind is JobKind.embedding:
            _embed(w, record, ctx)
        else:
            _generate(w, record, loaded.output, ctx)
    except redis.RedisError:
        # Past the client's retries: the sweeper requeues the job once no beat claims it.
        log.exception("Redis failed during the job; leaving it to recovery", extra=ctx)
    finally:
        w.heartbeat.untrack(job_id)


def _generate(w: Worker, record: JobRecord, output: str, ctx: dict[str, Any]) -> None:
    attempt_started = time.monotonic()
    plan = _plan(w, record, ctx)
    if plan is None:
        return
    lease = record.lease or ""
    emitter = TokenEmitter(w.jobs, record, lease, w.settings.jobs.coalesce_ms / 1000)
    generation = w.engine.submit(_request(w, record, plan, output))
    log.info("job started", extra={**ctx, "attempt": record.attempts,
                                   "prompt_tokens": plan.prompt_tokens})
    w.cancels.watch(record.id, generation)  # a cancel request stops it before its next token
    try:
        relayed = _relay(generation, emitter)
    finally:
        w.cancels.forget(record.id)
    if relayed is Emitted.lost:
        log.warning("job taken from this worker (requeued or ended); dropped its generation",
                    extra=ctx)
        return
    outcome = generation.outcome
    status, error = _status(outcome, record)
    answer = _output(w, record) if status is JobStatus.succeeded else ""  # what clients saw
    finish_reason = outcome.finish_reason
    if status is JobStatus.succeeded:
        error = _mismatch(record, answer, outcome, ctx)
        status, finish_reason = ((JobStatus.failed, "error") if error else
                                 (status, finish_reason))
    succeeded = status is JobStatus.succeeded
    persisted = _persist(w, record, plan, answer) if succeeded else None
    if succeeded and w.engine.keeps_prompts:
        _note_affinity(w, record, answer)
    prompt_tokens = outcome.prompt_tokens or plan.prompt_tokens
    cached = outcome.cached_tokens
    finished = time.time()
    result = w.jobs(w.jobs.ops.finish(
        record, status, lease, error=error, finish_reason=finish_reason,
        # Only true is written here: a parked write already set false, and the
        # outbox drainer may have flipped it to true since.
        persisted=True if persisted else None, history_messages=plan.history_used,
        history_trimmed=plan.history_trimmed, prompt_tokens=prompt_tokens,
        usage={"prompt_tokens": prompt_tokens, "completion_tokens": emitter.completion_tokens,
               "total_tokens": prompt_tokens + emitter.completion_tokens,
               "prompt_tokens_details": {"cached_tokens": cached}},
        timings={**_timings(record, emitter, attempt_started, finished),
                 "cached_tokens": cached},
    ))
    log.info("job finished", extra={**ctx, "status": status.value, "result": result,
                                    "finish_reason": outcome.finish_reason,
                                    "cached_tokens": cached,
                                    "completion_tokens": emitter.completion_tokens})


def _note_affinity(w: Worker, record: JobRecord, answer: str) -> None:
    """Note this worker as the one whose prompt cache holds the conversation's turn, so
    the API sends its next turn here while this worker has a free slot (shared.affinity)."""
    ttl = w.settings.worker.affinity_ttl_s
    if not ttl or record.kind is not JobKind.chat:
        return
    turns = affinity.after_turn(record.messages, record.conversation_id, answer,
                                record.fresh_conversation)
    try:
        with w.jobs.redis.pipeline(transaction=False) as pipe:
            for turn in turns:
                pipe.set(w.jobs.keys.affinity(record.queue, record.tenant, turn),
                         w.worker_id, ex=max(1, round(ttl)))
            pipe.execute()
    except redis.RedisError:
        log.warning("could not note the prompt cache's affinity", extra={"job_id": record.id})


def _embed(w: Worker, record: JobRecord, ctx: dict[str, Any]) -> None:
    """Embed the job's texts and finish it with the vectors as its ``result``
    (see :mod:`shared.vectors`). Between texts the engine asks whether the job was
    cancelled (it then ends ``cancelled``) or taken from this run (it is dropped)."""
    lease = record.lease or ""
    log.info("job started", extra={**ctx, "attempt": record.attempts, "kind": "embedding",
                                   "texts": len(record.inputs or [])})
    asked: list[Emitted] = []

    def stop() -> bool:  # an empty emit: is the job still this run's, not cancelled?
        verdict = w.jobs(w.jobs.ops.emit(record, lease, [], 0)).verdict
        if verdict in (Emitted.cancel, Emitted.lost):
            asked.append(verdict)
        return bool(asked)

    try:
        done = w.engine.embed(record.inputs or [], _deadline(w, record), stop)
    except redis.RedisError:
        raise  # left to recovery, as a generation's (run_job)
    except Exception as exc:
        _embedding_ended(w, record, exc, asked, ctx)
        return
    finished = time.time()
    started_at = record.started_at or finished
    n = done.prompt_tokens
    result = w.jobs(w.jobs.ops.finish(
        record, JobStatus.succeeded, lease, finish_reason="stop", prompt_tokens=n,
        usage={"prompt_tokens": n, "completion_tokens": 0, "total_tokens": n},
        result={vectors.RESULT_KEY: [vectors.pack(v) for v in done.vectors]},
        timings={"queue_wait_ms": round((started_at - record.created_at) * 1000, 3),
                 "duration_ms": round((finished - started_at) * 1000, 3)},
    ))
    log.info("job finished", extra={**ctx, "status": "succeeded", "result": result,
                                    "prompt_tokens": n})


def _embedding_ended(w: Worker, record: JobRecord, exc: Exception, asked: list[Emitted],
                     ctx: dict[str, Any]) -> None:
    """An embedding job that did not complete: cancelled, taken away, or failed."""
    lease = record.lease or ""
    if Emitted.lost in asked:
        log.warning("job taken from this worker (requeued or ended); dropped its embedding",
                    extra=ctx)
        return
    if Emitted.cancel in asked:
        w.jobs(w.jobs.ops.finish(record, JobStatus.cancelled, lease,
                                 finish_reason="cancelled"))
        log.info("job cancelled", extra=ctx)
        return
    code = exc.code if isinstance(exc, EmbeddingError) else "embedding_error"
    log.warning("embedding failed", extra={**ctx, "error": str(exc), "code": code})
    w.jobs(w.jobs.ops.finish(record, JobStatus.failed, lease, finish_reason="error",
                             error={"code": code, "message": str(exc)}))


def _request(w: Worker, record: JobRecord, plan: PromptPlan, output: str) -> GenRequest:
    params = record.params
    remaining = SamplingParams.model_validate(
        {**params.model_dump(), "max_tokens": max(params.max_tokens - record.completion_tokens, 0)}
    )
    return GenRequest(job_id=record.id, messages=plan.messages, prompt=plan.prompt,
                      params=remaining, continuation=output, deadline=_deadline(w, record),
                      tenant=record.tenant, conversation_id=record.conversation_id)


def _deadline(w: Worker, record: JobRecord) -> float:
    """When generation must stop (``time.monotonic()``): the job time limit from now,
    or the caller's ``cancel_at`` if that comes first."""
    budget = float(w.settings.celery.soft_time_limit_s)
    if record.cancel_at is not None:
        budget = min(budget, record.cancel_at - time.time())
    return time.monotonic() + budget


def _relay(generation: Generation, emitter: TokenEmitter) -> Emitted:
    """Stream the generation's pieces; stop it when the job is cancelled or lost.

    Returns ``lost`` when the job stopped being this run's (nothing more may be
    written), else ``ok``. If writing fails for good (Redis gone past the client's
    retries), the generation is stopped so its slot frees; the job is left to the
    recovery sweeper, which requeues it once this worker no longer claims it.
    """
    asked = Emitted.ok
    try:
        for piece in generation.pieces(POLL_S):
            result = emitter.add(piece) if piece is not None else emitter.flush()
            if result is not Emitted.ok and asked is Emitted.ok:
                asked = result
                generation.cancel()
        # A cancel seen only here came after the last token: the answer is complete.
        final = emitter.flush()
    except BaseException:
        generation.cancel()
        raise
    return Emitted.lost if Emitted.lost in (asked, final) else Emitted.ok


def _output(w: Worker, record: JobRecord) -> str:
    loaded = w.jobs(w.jobs.ops.load(record.id))
    return loaded.output


def _status(outcome: Outcome, record: JobRecord) -> tuple[JobStatus, dict[str, str] | None]:
    if outcome.finish_reason == "cancelled":
        return JobStatus.cancelled, None
    if outcome.finish_reason == "timeout":
        past_cancel_at = record.cancel_at is not None and time.time() >= record.cancel_at - 0.5
        message = ("the job's cancel_after passed while it was running" if past_cancel_at
                   else "generation exceeded the job time limit")
        return JobStatus.failed, {"code": "timeout", "message": message}
    if outcome.finish_reason == "error":
        return JobStatus.failed, {"code": outcome.error_code or "generation_error",
                                  "message": outcome.error or "generation failed"}
    return JobStatus.succeeded, None


def _mismatch(record: JobRecord, answer: str, outcome: Outcome,
              ctx: dict[str, Any]) -> dict[str, str] | None:
    """The error of a finished answer that does not validate against the schema it was
    asked to match (``response_format``, tool parameters; :mod:`shared.answers`), or
    None. An answer cut short by ``max_tokens`` says so itself and is not checked."""
    if outcome.finish_reason == "length":
        return None
    error = answers.mismatch(answer, record.answer_schema, record.tools, record.id)
    if error is not None:
        log.warning("answer does not match its schema",
                    extra={**ctx, "code": error["code"], "detail": error["message"]})
    return error


def _plan(w: Worker, record: JobRecord, ctx: dict[str, Any]) -> PromptPlan | None:
    """The job's prompt, or None after failing the job when it cannot be built
    (e.g. the model's chat template refuses the messages' roles)."""
    try:
        if record.kind is JobKind.completion:
            return _raw_plan(w.engine.prompter, record)
        return plan_prompt(w.conversations, w.engine.prompter, w.engine.context_size,
                           record, ctx)
    except Exception as exc:
        log.exception("prompt could not be built", extra=ctx)
        w.jobs(w.jobs.ops.finish(record, JobStatus.failed, record.lease or "",
                                 finish_reason="error",
                                 error={"code": "prompt_error", "message": str(exc)}))
        return None


def _raw_plan(prompter: PromptRenderer | None, record: JobRecord) -> PromptPlan:
    """A completion job's prompt: its text as it is (no template, no conversation)."""
    if prompter is None:
        raise ValueError("completing a raw prompt needs the model's own tokenizer "
                         "(a local GGUF model)")
    text = (record.inputs or [""])[0]
    return PromptPlan(prompt=prompter.raw(text), messages=[{"role": "user", "content": text}],
                      turn=[])


def _persist(w: Worker, record: JobRecord, plan: PromptPlan, answer: str) -> bool | None:
    """Append the request's turn and the answer to the conversation, exactly once.

    Done before the job is marked finished, so its final state says whether the
    write landed (``persisted``) or waits in the outbox.
    """
    if not record.conversation_id:
        return None
    calls = parse_calls(answer, ToolSet.from_json(record.tools), record.id)
    reply: dict[str, Any] = ({"role": "assistant", "content": "", "tool_calls": calls} if calls
                             else {"role": "assistant", "content": answer})
    write = TurnWrite(
        conversation_id=record.conversation_id, tenant=record.tenant, job_id=record.id,
        at=record.created_at, messages=[*plan.turn, reply],
        user_id=record.user_id, persona=record.persona, written_at=time.time(),
    )
    return w.persister.persist(write)


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
