"""Submitting jobs and reading them back: the logic behind every job-shaped route.

Every state change is a :mod:`shared.lifecycle` operation run on the API's
Redis (``svc.jobs``); this module adds admission, the broker hand-off and the
caller's view (queue position, output so far).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import anyio
from redis.exceptions import RedisError

from api import webhooks
from api.services import Services
from api.streams import Event, EventMerger
from shared.conversations import new_conversation_id
from shared.errors import (
    ContextOverflow,
    Gone,
    InvalidRequest,
    NotFound,
    QueueFull,
    Unavailable,
    UnknownModel,
    UnsupportedParameter,
)
from shared.events import KeepaliveEvent, LogprobEntry, StatusEvent, TokenEvent, is_terminal
from shared.json_grammar import UnsupportedSchema, response_format_grammar
from shared.lifecycle import Cancelled, JobRecord, new_job_id
from shared.personas import persona_turns
from shared.registry import ModelSpec
from shared.schemas import Job, JobKind, JobRequest, JobStatus, SamplingParams, cancel_at
from shared.tools import ToolSet, check_messages, toolset_of
from shared.views import job_view

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
    """The request's sampling fields over the model's registry defaults (request values
    win; its stop strings are added to the model's): see ModelSpec.sampling_params.
    ``response_format`` becomes the grammar that enforces it. A parameter the model
    (or its upstream) cannot honour is refused (400 naming it), never dropped."""
    grammar = _grammar(req)
    params = spec.sampling_params({**req.sampling_fields(), "grammar": grammar})
    if grammar is not None:
        params = _grammar_ends_it(req, params)
    problems = spec.upstream.unsupported(params) if spec.upstream else []
    if problems:
        raise UnsupportedParameter.of_fields(
            [("response_format" if f == "grammar" else f, why) for f, why in problems])
    return params


def _grammar(req: JobRequest) -> str | None:
    try:
        return response_format_grammar(req.response_format, "response_format.json_schema.schema")
    except UnsupportedSchema as exc:
        raise UnsupportedParameter.of_fields([(exc.path, exc.message)]) from exc


def _grammar_ends_it(req: JobRequest, params: SamplingParams) -> SamplingParams:
    """Under response_format the grammar decides where the answer ends: a stop string
    could cut it into invalid JSON, so a request's own ``stop`` is refused and the
    model's default stop strings (which guard free text) do not apply."""
    if req.stop_list():
        raise UnsupportedParameter.of_fields(
            [("stop", "stop strings could cut a structured answer into invalid JSON; "
                      "response_format ends the answer where the JSON ends")])
    return params.model_copy(update={"stop": []})


async def check_vocabulary(svc: Services, spec: ModelSpec, params: SamplingParams) -> None:
    """Every ``logit_bias`` token id is in the model's vocabulary (when chatq has it)."""
    if not params.logit_bias:
        return
    n_vocab = await svc.tokens.vocab_size(spec)
    bad = [t for t in params.logit_bias if n_vocab is not None and t >= n_vocab]
    if bad:
        raise InvalidRequest.of_field(
            "logit_bias", f"token {bad[0]} is outside the vocabulary of {spec.name} "
                          f"({n_vocab} tokens)")


def overflow_message(context_size: int, prompt_tokens: int, max_tokens: int,
                     what: str = "messages") -> str:
    """OpenAI's wording of a context overflow: LangChain and LiteLLM recognise it.
    ``what`` names the text that was counted (``messages``, ``prompt``, ``input[1]``)."""
    head = f"This model's maximum context length is {context_size} tokens. However, "
    if prompt_tokens >= context_size:
        return (head + f"your {what} resulted in {prompt_tokens} tokens. Please reduce "
                f"the length of the {what}.")
    return (head + f"you requested {prompt_tokens + max_tokens} tokens ({prompt_tokens} in "
            f"the {what}, {max_tokens} in the completion). Please reduce the length of "
            f"the {what} or completion.")


def tool_params(spec: ModelSpec, req: JobRequest, params: SamplingParams,
                toolset: ToolSet | None) -> SamplingParams:
    """With ``tool_choice`` required or a named function, the grammar that forces the
    call. A model whose upstream takes no grammar cannot be forced: 400. One grammar
    per answer: a forced call and a ``response_format`` cannot both hold, so the
    combination is refused naming ``response_format``."""
    grammar = toolset.grammar() if toolset else None
    if grammar is None:
        return params
    if params.grammar is not None:
        raise UnsupportedParameter.of_fields([(
            "response_format", "a forced tool call (tool_choice required or a named "
                               "function) is the whole answer; drop response_format or "
                               "use tool_choice auto")])
    if spec.upstream and spec.upstream.unsupported(params.model_copy(update={"grammar": grammar})):
        raise UnsupportedParameter.of_fields([(
            "tool_choice", f"model {spec.name}'s upstream takes no grammar, so a call "
                           "cannot be forced; use tool_choice auto")])
    return params.model_copy(update={"grammar": grammar})


async def check_context(svc: Services, spec: ModelSpec, messages: list[dict[str, Any]],
                        max_tokens: int, toolset: ToolSet | None = None) -> int | None:
    """Count the prompt with the model's tokenizer; 400 when it cannot fit with max_tokens.
    None when chatq has no tokenizer for the model: an upstream model's server checks
    its context, and its refusal fails the job (``upstream_rejected``)."""
    prompt_tokens = await svc.tokens.count(spec, messages, toolset)
    if prompt_tokens is not None and prompt_tokens + max_tokens > spec.context_size:
        # OpenAI's (and vLLM's) wording: client libraries (LangChain, LiteLLM) match it.
        raise ContextOverflow(
            overflow_message(spec.context_size, prompt_tokens, max_tokens),
            details={"prompt_tokens": prompt_tokens, "max_tokens": max_tokens,
                     "context_size": spec.context_size},
        )
    return prompt_tokens


async def submit(svc: Services, req: JobRequest, tenant: str) -> JobRecord:
    """Admit and enqueue a job. Nothing is left behind when it cannot be queued."""
    now = time.time()
    deadline = check_cancel_after(svc, req, now)
    if req.webhook is not None:
        await webhooks.check_target(svc, req.webhook)
    spec = resolve_model(svc, req.model)
    messages = [m.model_dump(exclude_none=True) for m in req.messages]
    check_messages(messages)
    toolset = toolset_of(req.tools, req.tool_choice, req.parallel_tool_calls)
    params = tool_params(spec, req, sampling(spec, req), toolset)
    await check_vocabulary(svc, spec, params)
    # Count what the worker will render at least: persona head + this request's turns
    # (stored history is trimmed by the worker to fit).
    head = persona_turns(req.persona, [m["content"] for m in messages if m["role"] == "system"])
    await check_context(svc, spec, head + [m for m in messages if m["role"] != "system"],
                        params.max_tokens, toolset)
    await svc.require_worker(spec.queue)
    if req.webhook is not None:
        await webhooks.tenant_secret(svc, tenant)  # made before its first delivery needs it
    record = JobRecord(
        id=new_job_id(), status=JobStatus.queued, model=spec.name, queue=spec.queue,
        tenant=tenant, params=params, messages=messages, created_at=now,
        conversation_id=req.conversation_id or new_conversation_id(),
        fresh_conversation=not req.conversation_id,
        persona=req.persona.model_dump() if req.persona else None, metadata=req.metadata,
        user_id=req.user_id, priority=req.priority, cancel_at=deadline, webhook=req.webhook,
        webhook_events=[e.value for e in req.hook_events() or []] or None,
        tools=toolset.to_json() if toolset else None,
    )
    await _create(svc, record)
    await _send(svc, record)
    log.info("job queued", extra={"job_id": record.id, "queue": spec.queue, "model": spec.name,
                                  "tenant": tenant, "priority": record.priority.value})
    return record


async def submit_text(svc: Services, req: JobRequest, tenant: str, kind: JobKind,
                      inputs: list[str], *, overrides: dict[str, Any] | None = None
                      ) -> JobRecord:
    """Admit and enqueue a job on raw text (:class:`JobKind`): a prompt completed as it
    is, or texts to embed. No chat template, persona or conversation; the same queue,
    lifecycle and worker as a chat job. ``req`` carries the model and sampling fields;
    ``overrides``, sampling fields a chat request does not carry (they win)."""
    spec = resolve_model(svc, req.model)
    if spec.upstream is not None and kind is JobKind.completion:
        raise UnsupportedParameter.of_fields([(
            "model", f"model {spec.name!r} is served by a remote upstream, to which chatq "
                     "forwards chat and embeddings only; completions need a local GGUF "
                     "model")])
    params = sampling(spec, req).model_copy(update=overrides or {})
    await check_vocabulary(svc, spec, params)
    if kind is JobKind.completion:
        await check_texts(svc, spec, inputs, params.max_tokens, field="prompt")
    else:
        await check_texts(svc, spec, inputs, 0)
    await svc.require_worker(spec.queue)
    record = JobRecord(
        id=new_job_id(), status=JobStatus.queued, model=spec.name, queue=spec.queue,
        tenant=tenant, params=params, messages=[], created_at=time.time(),
        metadata=req.metadata, user_id=req.user_id, kind=kind, inputs=inputs,
    )
    await _create(svc, record)
    await _send(svc, record)
    log.info("job queued", extra={"job_id": record.id, "queue": spec.queue, "model": spec.name,
                                  "tenant": tenant, "kind": kind.value})
    return record


async def check_texts(svc: Services, spec: ModelSpec, texts: list[str], max_tokens: int,
                      field: str = "input") -> int | None:
    """Each text read as it is must fit the model's context (with ``max_tokens`` for a
    prompt to complete): 400 naming the first that does not. The total token count."""
    counts = await svc.tokens.count_texts(spec, texts)
    if counts is None:
        return None
    for i, n in enumerate(counts):
        if n + max_tokens > spec.context_size:
            where = f"{field}[{i}]" if len(texts) > 1 else field
            raise ContextOverflow(
                overflow_message(spec.context_size, n, max_tokens, where),
                details={"prompt_tokens": n, "max_tokens": max_tokens,
                         "context_size": spec.context_size, "field": where})
    return sum(counts)


def check_cancel_after(svc: Services, req: JobRequest, now: float) -> float | None:
    """``cancel_after`` as a time (unix seconds): in the future, and no later than the
    longest a job may wait (its record lives that long while unfinished)."""
    at = cancel_at(req.cancel_after, now)
    if at is None:
        return None
    max_age = svc.settings.jobs.max_age_s
    if at <= now:
        raise InvalidRequest.of_field("cancel_after", "that time has already passed")
    if at > now + max_age:
        raise InvalidRequest.of_field(
            "cancel_after", f"at most {max_age} s after the submit (the longest a job "
                            "may wait here)")
    return at


async def _create(svc: Services, record: JobRecord) -> None:
    try:
        place = await svc.jobs(svc.jobs.ops.create(record))
    except RedisError as exc:
        raise Unavailable("Redis is unreachable; the job was not accepted") from exc
    if place is None:
        limit = svc.settings.api.max_queue_depth
        raise QueueFull(f"queue {record.queue!r} is full ({limit} jobs waiting); retry later",
                        details={"queue": record.queue, "limit": limit},
                        headers={"Retry-After": str(RETRY_AFTER_FULL_S)})


async def _send(svc: Services, record: JobRecord) -> None:
    """Hand the job to the broker, then mark it sent. If this process dies in between,
    the recovery sweeper finds the job unsent and sends it."""
    try:
        await svc.send(record.id, record.queue, record.dispatch, record.priority)
    except Exception as exc:
        log.warning("broker refused the job; discarding it",
                    extra={"job_id": record.id, "error": type(exc).__name__})
        try:
            await svc.jobs(svc.jobs.ops.discard(record))
        except RedisError:
            log.warning("could not discard unqueued job", extra={"job_id": record.id})
        raise Unavailable("the broker is unreachable; the job was not accepted") from exc
    await svc.jobs(svc.jobs.ops.sent(record.id, record.dispatch))


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
