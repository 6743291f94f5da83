"""Admission: the one way work becomes a job, whatever the route.

Every route (``/v1/jobs``, ``/invocations``, chat and legacy completions,
embeddings, responses, the ancestor routes, each line of a batch: :mod:`api.batches`)
turns its request into a :class:`Work` and calls :func:`admit`. What must hold, for every
route alike:

- Every check runs before anything is queued, in one order (the first failing one
  answers): the input budgets (:mod:`api.budgets`, before any expensive work), the
  deadline, the webhook target, the model, the text's length against its context,
  the messages and tools, the grammars (``response_format``, a forced tool call),
  the sampling parameters (resolved once,
  :meth:`shared.registry.ModelSpec.resolve_sampling`), the vocabulary, the context
  (the prompt's tokens plus ``max_tokens``), a live worker, the conversation's
  owner. A refused request leaves nothing behind.
- CPU-heavy work never runs on the event loop: the grammars are built in a worker
  thread (:mod:`api.grammars`), tokens are counted in one (:mod:`api.tokens`).
- Nothing is left half-made: the job is created in Redis (or refused with 429
  when its queue is full), then handed to the broker; if the broker refuses it,
  the job is discarded (:func:`_send`).
- An ``Idempotency-Key`` makes at most one job per tenant and key
  (:mod:`api.idempotency`): a repeat gets the first job back, ``replayed``.
"""

from __future__ import annotations

import dataclasses
import logging
import time
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

import anyio
from redis.exceptions import RedisError

from api import budgets, grammars, jobs, webhooks
from api.idempotency import body_hash
from api.services import Services
from shared import affinity
from shared.conversations import new_conversation_id
from shared.errors import (
    ContextOverflow,
    InvalidRequest,
    QueueFull,
    Unavailable,
    UnknownModel,
    UnsupportedParameter,
)
from shared.lifecycle import JobRecord, QueueLimit, new_job_id
from shared.personas import Persona, persona_turns
from shared.registry import ModelSpec
from shared.schemas import (
    JobKind,
    JobRequest,
    JobStatus,
    Message,
    Priority,
    ResponseFormat,
    SamplingParams,
    WebhookEvent,
    cancel_at,
)
from shared.tools import ToolSet, check_messages

log = logging.getLogger(__name__)

RETRY_AFTER_FULL_S = 5


@dataclass(frozen=True)
class Work:
    """What a caller asks for, whatever the route: chat ``messages``, or ``inputs``
    (a prompt to complete as it is, texts to embed) for the other :class:`JobKind`.

    ``sampling`` holds the request's sampling values as :class:`SamplingParams`
    names them (None or absent: the model's default); ``response_format`` and the
    tool fields become grammars at admission.
    """

    kind: JobKind = JobKind.chat
    model: str | None = None
    messages: list[Message] = field(default_factory=list)
    inputs: list[str] = field(default_factory=list)
    sampling: dict[str, Any] = field(default_factory=dict)
    response_format: ResponseFormat | None = None
    tools: list[dict[str, Any]] | None = None
    tool_choice: str | dict[str, Any] | None = None
    parallel_tool_calls: bool | None = None
    conversation_id: str | None = None
    persona: Persona | None = None
    user_id: str | None = None
    metadata: dict[str, Any] | None = None
    end_user: str | None = None  # OpenAI's ``user``: kept in the job's metadata
    priority: Priority = Priority.interactive
    cancel_after: float | datetime | None = None
    webhook: str | None = None
    webhook_events: list[WebhookEvent] | None = None
    idempotency_key: str | None = None
    body_hash: str = ""  # the request as the idempotency key's first use saw it
    store: bool = True  # False: no conversation (nothing loaded, nothing appended)
    response: dict[str, Any] | None = None  # a Responses API request's echo (JobRecord)

    @classmethod
    def chat(cls, req: JobRequest, idempotency_key: str | None = None) -> Work:
        """A chat request (``POST /v1/jobs`` and every route that builds one)."""
        return cls(
            model=req.model, messages=list(req.messages), sampling=req.sampling_fields(),
            response_format=req.response_format, tools=req.tools, tool_choice=req.tool_choice,
            parallel_tool_calls=req.parallel_tool_calls, conversation_id=req.conversation_id,
            persona=req.persona, user_id=req.user_id, metadata=req.metadata,
            priority=req.priority, cancel_after=req.cancel_after, webhook=req.webhook,
            webhook_events=req.hook_events(), idempotency_key=idempotency_key,
            body_hash=body_hash(req) if idempotency_key is not None else "")

    @property
    def max_tokens(self) -> int | None:
        return self.sampling.get("max_tokens")

    def job_metadata(self) -> dict[str, Any] | None:
        """The caller's metadata, with OpenAI's ``user`` when given."""
        merged = {**(self.metadata or {}), **({"user": self.end_user} if self.end_user else {})}
        return merged or None


@dataclass(frozen=True)
class Admitted:
    """The job :func:`admit` made, or (``replayed``) the one an earlier request with the
    same ``Idempotency-Key`` made, with its output so far."""

    record: JobRecord
    output: str = ""
    replayed: bool = False


async def admit(svc: Services, work: Work, tenant: str) -> Admitted:
    """Check ``work``, make its job and queue it (see the module's docstring)."""
    if work.idempotency_key is None:
        return Admitted(await _admit(svc, work, tenant))
    claim = await svc.idempotency.claim(tenant, work.idempotency_key, work.body_hash)
    if claim.job_id is not None:
        record, output = await jobs.fetch(svc, claim.job_id, tenant)
        return Admitted(record, output, replayed=True)
    try:
        record = await _admit(svc, work, tenant)
    except BaseException:
        with anyio.CancelScope(shield=True):  # also when the client went away
            await svc.idempotency.release(claim)
        raise
    await svc.idempotency.complete(claim, record.id)
    return Admitted(record)


@dataclass(frozen=True)
class _Checked:
    """What the checks made of the work: its model, sampling parameters and tools."""

    spec: ModelSpec
    params: SamplingParams
    toolset: ToolSet | None
    messages: list[dict[str, Any]]
    deadline: float | None
    answer_schema: dict[str, Any] | None = None  # response_format's, checked at the end
    tokens: int = 0  # prompt tokens (when counted) plus max_tokens: what rate limits count


async def _admit(svc: Services, work: Work, tenant: str) -> JobRecord:
    now = time.time()
    checked = await _check(svc, work, now)
    if work.webhook is not None:
        await webhooks.tenant_secret(svc, tenant)  # made before its first delivery needs it
    record = _record(work, checked, tenant, now)
    reserved = await svc.limiter.reserve(tenant, record.id, checked.tokens)
    record.rate = reserved.for_job() if reserved is not None else None
    try:
        await _create(svc, record)
        await _send(svc, record)
    except (QueueFull, Unavailable):
        await svc.limiter.release(reserved)
        raise
    log.info("job queued", extra={"job_id": record.id, "queue": record.queue,
                                  "model": record.model, "tenant": tenant,
                                  "kind": record.kind.value, "priority": record.priority.value})
    return record


async def check(svc: Services, work: Work) -> ModelSpec:
    """Every check :func:`admit` makes, but a live worker's (a batch validates its lines
    before any runs): the error the route would answer, or the work's model."""
    return (await _check(svc, work, time.time(), need_worker=False)).spec


def queue_of(svc: Services, work: Work) -> str:
    """The queue the work's model is served on (UnknownModel when there is no such model)."""
    return _model(svc, work).queue


async def _check(svc: Services, work: Work, now: float, *, need_worker: bool = True
                 ) -> _Checked:
    limits = svc.settings.limits
    budgets.check(work, limits)
    deadline = check_cancel_after(svc, work.cancel_after, now)
    if work.webhook is not None:
        await webhooks.check_target(svc, work.webhook)
    spec = _model(svc, work)
    budgets.check_fits(work, spec, limits)
    messages = [m.model_dump(exclude_none=True) for m in work.messages]
    if work.kind is JobKind.chat:
        check_messages(messages)
    built = await grammars.build(svc, work.response_format, work.tools, work.tool_choice,
                                 work.parallel_tool_calls)
    params = spec.resolve_sampling(work.sampling, grammar=built.response_format,
                                   tool_grammar=built.tool_call)
    checked = _Checked(spec, params, built.toolset, messages, deadline, built.schema)
    await check_vocabulary(svc, spec, params)
    prompt_tokens = await _check_context(svc, work, checked)
    if need_worker:
        await svc.require_worker(spec.queue)
    return dataclasses.replace(checked, tokens=(prompt_tokens or 0) + params.max_tokens)


def _model(svc: Services, work: Work) -> ModelSpec:
    """The work's model (an embedding's default: the registry's embedding model)."""
    name = work.model
    if name is None and work.kind is JobKind.embedding:
        name = svc.registry.embedding_name
    spec = resolve_model(svc, name)
    if spec.upstream is not None and work.kind is JobKind.completion:
        raise UnsupportedParameter.of_fields([(
            "model", f"model {spec.name!r} is served by a remote upstream, to which chatq "
                     "forwards chat and embeddings only; completions need a local GGUF "
                     "model")])
    return spec


def resolve_model(svc: Services, name: str | None) -> ModelSpec:
    spec = svc.registry.get(name)
    if spec is None:
        known = svc.registry.names
        raise UnknownModel(f"unknown model {name!r}; known models: {', '.join(known)}",
                           details={"models": known})
    return spec


async def _check_context(svc: Services, work: Work, checked: _Checked) -> int | None:
    """The prompt's tokens (None: no local tokenizer), refused when they cannot fit."""
    spec, params, messages = checked.spec, checked.params, checked.messages
    if work.kind is JobKind.completion:
        return await check_texts(svc, spec, work.inputs, params.max_tokens, field="prompt")
    if work.kind is JobKind.embedding:
        return await check_texts(svc, spec, work.inputs, 0)
    # Count what the worker will render at least: persona head + this request's turns
    # (stored history is trimmed by the worker to fit).
    head = persona_turns(work.persona, [m["content"] for m in messages if m["role"] == "system"])
    return await check_context(svc, spec, head + [m for m in messages if m["role"] != "system"],
                               params.max_tokens, checked.toolset)


def _record(work: Work, checked: _Checked, tenant: str, now: float) -> JobRecord:
    chat = work.kind is JobKind.chat
    return JobRecord(
        id=new_job_id(), status=JobStatus.queued, model=checked.spec.name,
        queue=checked.spec.queue, tenant=tenant, params=checked.params,
        messages=checked.messages, created_at=now, kind=work.kind,
        inputs=None if chat else work.inputs,
        conversation_id=((work.conversation_id or new_conversation_id())
                         if chat and work.store else None),
        fresh_conversation=chat and work.store and not work.conversation_id,
        persona=work.persona.model_dump() if work.persona else None,
        metadata=work.job_metadata(),
        user_id=work.user_id, priority=work.priority, cancel_at=checked.deadline,
        webhook=work.webhook,
        webhook_events=[e.value for e in work.webhook_events or []] or None,
        tools=checked.toolset.to_json() if checked.toolset else None,
        answer_schema=checked.answer_schema,
        response=work.response,
    )


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


def check_cancel_after(svc: Services, cancel_after: float | datetime | None,
                       now: float) -> float | None:
    """``cancel_after`` as a time (unix seconds): in the future, and no later than the
    longest a job may wait (its record lives that long while unfinished)."""
    at = cancel_at(cancel_after, now)
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
    if place is QueueLimit.tenant:
        limit = svc.settings.api.max_tenant_queue_depth
        raise QueueFull(f"you have {limit} jobs waiting on queue {record.queue!r}, your most "
                        "(CHATQ_API__MAX_TENANT_QUEUE_DEPTH); retry later",
                        details={"queue": record.queue, "limit": limit, "scope": "tenant"},
                        headers={"Retry-After": str(RETRY_AFTER_FULL_S)})
    if place is QueueLimit.queue:
        limit = svc.settings.api.max_queue_depth
        raise QueueFull(f"queue {record.queue!r} is full ({limit} jobs waiting); retry later",
                        details={"queue": record.queue, "limit": limit, "scope": "queue"},
                        headers={"Retry-After": str(RETRY_AFTER_FULL_S)})


async def _route(svc: Services, record: JobRecord) -> str:
    """The queue the job's message goes to: the own queue of the worker whose prompt
    cache holds the conversation's last turn, while it beats and has a free slot; else
    the shared queue (see shared.affinity)."""
    worker_settings = svc.settings.worker
    if record.kind is not JobKind.chat or not worker_settings.affinity_ttl_s:
        return record.queue
    turn = affinity.next_turn(record.messages, record.conversation_id,
                              record.fresh_conversation)
    if turn is None:
        return record.queue
    horizon = time.time() - worker_settings.heartbeat_ttl_s
    try:
        worker = await svc.jobs(svc.jobs.ops.route(record, turn, horizon))
    except RedisError:
        return record.queue  # a hint only: the shared queue always serves
    return affinity.own_queue(record.queue, worker) if worker else record.queue


async def _send(svc: Services, record: JobRecord) -> None:
    """Hand the job to the broker, then mark it sent. If this process dies in between,
    the recovery sweeper finds the job unsent and sends it."""
    queue = await _route(svc, record)
    try:
        await svc.send(record.id, queue, record.dispatch, record.lane)
    except Exception as exc:
        log.warning("broker refused the job; discarding it",
                    extra={"job_id": record.id, "error": type(exc).__name__})
        try:
            await svc.jobs(svc.jobs.ops.discard(record))
        except RedisError:
            log.warning("could not discard unqueued job", extra={"job_id": record.id})
        raise Unavailable("the broker is unreachable; the job was not accepted") from exc
    await svc.jobs(svc.jobs.ops.sent(record.id, record.dispatch))
