"""Request and job schemas shared by the API (validation, responses) and the workers.

Request fields are defined once here and reused by every route that takes a
chat request (``/v1/jobs``, ``/invocations``, ``/v1/chat/completions``...).

What an async caller sets on a job (``webhook``, ``webhook_events``, ``priority``,
``cancel_after``) is checked here for shape only; what depends on the deployment
(https only and no private targets in production, ``cancel_after`` within the
longest a job may wait) is checked at submit (``api.jobs``).
"""

from __future__ import annotations

import math
from datetime import UTC, datetime
from enum import StrEnum
from typing import Annotated, Any, Literal
from urllib.parse import urlsplit

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    StrictFloat,
    StrictInt,
    ValidationInfo,
    field_validator,
    model_validator,
)

from shared.personas import Persona


class JobStatus(StrEnum):
    queued = "queued"
    running = "running"
    succeeded = "succeeded"
    failed = "failed"
    cancelled = "cancelled"
    expired = "expired"  # not started before its deadline: it never ran

    @property
    def terminal(self) -> bool:
        return self in TERMINAL


TERMINAL = frozenset({JobStatus.succeeded, JobStatus.failed, JobStatus.cancelled,
                      JobStatus.expired})


class JobKind(StrEnum):
    """What a job asks of its worker.

    ``chat``: messages rendered with the model's chat template, with persona and
    conversation. ``completion``: one prompt (``inputs[0]``) fed to the model as
    it is (no template, no conversation), the legacy ``/v1/completions``.
    ``embedding``: one vector per text of ``inputs`` (``/v1/embeddings``), written
    to the job's ``result``; nothing is streamed.
    """

    chat = "chat"
    completion = "completion"
    embedding = "embedding"


class Priority(StrEnum):
    """Within a queue, every waiting interactive job starts before any batch job."""

    interactive = "interactive"
    batch = "batch"


class WebhookEvent(StrEnum):
    """What a webhook is called for: ``start`` (the job began running) and ``completed``
    (it ended: succeeded, failed, cancelled or expired)."""

    start = "start"
    completed = "completed"


def webhook_event(status: str) -> WebhookEvent | None:
    """The webhook event a job's move to ``status`` raises, if any."""
    if status == JobStatus.running:
        return WebhookEvent.start
    if status in TERMINAL:
        return WebhookEvent.completed
    return None


WEBHOOK_URL_MAX = 2048


def check_webhook_url(url: str) -> str:
    """The shape of a webhook URL: http(s), a host, no credentials, no fragment.
    (Whether http and the host's addresses are allowed depends on the deployment.)"""
    parts = urlsplit(url)
    if parts.scheme not in ("https", "http"):
        raise ValueError("webhook must be an https:// URL (http:// in development)")
    if not parts.hostname:
        raise ValueError("webhook URL has no host")
    if parts.username is not None or parts.password is not None:
        raise ValueError("webhook URL must not carry credentials")
    if parts.fragment:
        raise ValueError("webhook URL must not have a #fragment")
    try:
        parts.port  # noqa: B018 (raises on a bad port)
    except ValueError as exc:
        raise ValueError(f"webhook URL has a bad port: {exc}") from None
    return url


def parse_cancel_after(value: object) -> float | datetime:
    """``cancel_after`` as given: seconds from the submit (a positive number, or a
    string of one), or an ISO 8601 time with its UTC offset (``Z`` or ``+02:00``)."""
    if isinstance(value, str):
        text = value.strip()
        try:
            value = float(text)
        except ValueError:
            value = _iso_time(text)
    if isinstance(value, bool) or not isinstance(value, int | float | datetime):
        raise ValueError("cancel_after must be seconds or an ISO 8601 time")
    if isinstance(value, datetime):
        if value.tzinfo is None:
            raise ValueError("cancel_after needs a UTC offset (e.g. Z or +02:00)")
        return value
    if not math.isfinite(value) or value <= 0:
        raise ValueError("cancel_after in seconds must be a positive number")
    return float(value)


def _iso_time(text: str) -> datetime:
    try:
        return datetime.fromisoformat(text)
    except ValueError:
        raise ValueError("cancel_after must be seconds or an ISO 8601 time such as "
                         "2030-01-01T12:00:00Z") from None


def cancel_at(cancel_after: float | datetime | None, submitted_at: float) -> float | None:
    """The absolute time (unix seconds) ``cancel_after`` names for a job submitted then."""
    if cancel_after is None:
        return None
    if isinstance(cancel_after, datetime):
        return cancel_after.timestamp()
    return submitted_at + cancel_after


class Message(BaseModel):
    model_config = ConfigDict(extra="forbid")

    role: Literal["system", "user", "assistant", "tool"]
    content: str = Field("", max_length=1_000_000)
    tool_calls: list[dict[str, Any]] | None = Field(
        None, description="An assistant turn's calls (OpenAI shape: id, type `function`, "
                          "function.name, function.arguments as a JSON string).")
    tool_call_id: str | None = Field(
        None, max_length=256, description="A `tool` message: the call it answers.")

    @field_validator("content", mode="before")
    @classmethod
    def _no_content(cls, value: object) -> object:
        return "" if value is None else value  # an assistant turn of only tool calls


# Tool fields, defined once (checked at submit by shared.tools: a 400 naming the param).
ToolsField = Annotated[
    list[dict[str, Any]] | None,
    Field(None, description="Functions the model may call: `[{\"type\": \"function\", "
                            "\"function\": {\"name\", \"description\", \"parameters\"}}]` "
                            "(parameters: a JSON Schema, enforced by grammar when forced).")]
ToolChoiceField = Annotated[
    str | dict[str, Any] | None,
    Field(None, description="`auto` (default with tools), `none`, `required`, or "
                            "`{\"type\": \"function\", \"function\": {\"name\": ...}}`; "
                            "`required` and a named function are forced by a grammar.")]
ParallelToolCallsField = Annotated[
    bool | None,
    Field(None, description="`false`: at most one call per answer. A forced answer "
                            "(`required`, a named function) is always one call.")]


# Sampling fields, defined once (None = the model's registry default). Numbers are
# strict: `true` is not 1 and "5" is not 5 (422 naming the field, 400 on the OpenAI
# paths), as OpenAI refuses them; an integer is a number where a float is asked.
MaxTokensField = Annotated[
    StrictInt | None, Field(None, gt=0, le=131072, description="Most tokens to generate.")]
TemperatureField = Annotated[
    StrictFloat | None, Field(None, ge=0, le=2, description="Sampling temperature; 0 is greedy.")]
TopPField = Annotated[
    StrictFloat | None, Field(None, gt=0, le=1, description="Nucleus sampling.")]
SeedField = Annotated[
    StrictInt | None, Field(None, ge=0, lt=2**32, description="Seed for reproducible sampling.")]
StopField = Annotated[
    str | list[str] | None,
    Field(None, description="Up to 4 strings that end generation (not included in output)."),
]
TopKField = Annotated[
    StrictInt | None, Field(None, ge=0, le=1000,
                            description="Sample among the k most likely tokens; 0: off.")]
MinPField = Annotated[
    StrictFloat | None, Field(None, ge=0, le=1,
                              description="Drop tokens below min_p x the most likely "
                                          "token's probability; 0: off.")]
RepeatPenaltyField = Annotated[
    StrictFloat | None, Field(None, gt=0, le=2,
                              description="Divide the logits of recent tokens by this "
                                          "(llama.cpp); 1: off.")]
PresencePenaltyField = Annotated[
    StrictFloat | None, Field(None, ge=-2, le=2,
                              description="Subtract from the logit of any token already "
                                          "generated.")]
FrequencyPenaltyField = Annotated[
    StrictFloat | None, Field(None, ge=-2, le=2,
                              description="Subtract this x its count from a generated "
                                          "token's logit.")]
LogitBiasField = Annotated[
    dict[str, StrictFloat] | None,
    Field(None, description="Token id (as a string) -> bias from -100 to 100 added to its "
                            "logit; -100 bans the token, 100 all but forces it.")]
LogprobsField = Annotated[
    bool | None, Field(None, description="Return the log probability of each output token.")]
TopLogprobsField = Annotated[
    StrictInt | None, Field(None, ge=0, le=20, description="With logprobs: the most likely "
                                                            "alternatives per token (0-20).")]

LOGIT_BIAS_MAX = 100.0


def logit_bias_ids(bias: dict[str, float] | None, field: str = "logit_bias") -> dict[int, float]:
    """OpenAI's ``logit_bias`` (token ids as strings) as token id -> bias; ValueError
    naming the bad entry."""
    out: dict[int, float] = {}
    for key, value in (bias or {}).items():
        try:
            token = int(key)
        except ValueError:
            raise ValueError(f"{field}: key {key!r} is not a token id") from None
        if token < 0:
            raise ValueError(f"{field}: key {key!r} is not a token id")
        if not -LOGIT_BIAS_MAX <= value <= LOGIT_BIAS_MAX:
            raise ValueError(f"{field}: the bias of {key} must be from -100 to 100")
        out[token] = float(value)
    return out


def top_logprobs_need_logprobs(value: int | None, info: ValidationInfo) -> int | None:
    """A field validator of ``top_logprobs`` (declared after ``logprobs``)."""
    if value and not info.data.get("logprobs"):
        raise ValueError("top_logprobs needs logprobs: true")
    return value


class JsonSchemaFormat(BaseModel):
    """``response_format.json_schema`` as OpenAI takes it."""

    model_config = ConfigDict(extra="forbid")

    name: str = Field(max_length=64, description="The schema's name.")
    description: str | None = None
    schema_: dict[str, Any] = Field(
        default_factory=dict, alias="schema",
        description="A JSON Schema; only what chatq can enforce by grammar is taken "
                    "(anything else is refused, naming it).")
    strict: bool | None = Field(None, description="Accepted: chatq always enforces the schema.")


class ResponseFormat(BaseModel):
    """Structured output, enforced during sampling by a grammar built from it:
    ``text`` (free text), ``json_object`` (any JSON object) or ``json_schema``."""

    model_config = ConfigDict(extra="forbid")

    type: Literal["text", "json_object", "json_schema"]
    json_schema: JsonSchemaFormat | None = None

    @model_validator(mode="after")
    def _schema_given(self) -> ResponseFormat:
        if (self.type == "json_schema") != (self.json_schema is not None):
            raise ValueError("json_schema is given with type json_schema, and only then")
        return self


ResponseFormatField = Annotated[
    ResponseFormat | None,
    Field(None, description="`{\"type\": \"json_object\"}` or `{\"type\": \"json_schema\", "
                            "\"json_schema\": {\"name\", \"schema\"}}`: the answer is JSON "
                            "(matching the schema), enforced by a grammar while sampling.")]


class SamplingParams(BaseModel):
    """Generation parameters as the worker receives them (defaults already applied).

    Every field takes effect in the engine; the neutral value of each (``top_k``
    0, penalties 0 or 1, no bias, no grammar) leaves sampling as it was.
    """

    max_tokens: int
    temperature: float
    top_p: float
    stop: list[str] = []
    seed: int | None = None
    top_k: int = 40  # 0: off
    min_p: float = 0.05  # 0: off
    repeat_penalty: float = 1.0  # 1: off
    presence_penalty: float = 0.0
    frequency_penalty: float = 0.0
    penalty_last_n: int = 64  # how many recent tokens the penalties look at
    logit_bias: dict[int, float] = {}  # token id -> added to its logit (-100 bans it)
    grammar: str | None = None  # GBNF the output must match (structured output, tools)
    logprobs: bool = False
    top_logprobs: int = 0  # alternatives per token (with logprobs), at most 20


class SamplingFields(BaseModel):
    """The sampling and tool fields of a chat request, one definition and one set of
    checks for ``POST /v1/jobs`` (:class:`JobRequest`) and ``/v1/chat/completions``."""

    max_tokens: MaxTokensField = None
    temperature: TemperatureField = None
    top_p: TopPField = None
    stop: StopField = None
    seed: SeedField = None
    top_k: TopKField = None
    min_p: MinPField = None
    repeat_penalty: RepeatPenaltyField = None
    presence_penalty: PresencePenaltyField = None
    frequency_penalty: FrequencyPenaltyField = None
    logit_bias: LogitBiasField = None
    logprobs: LogprobsField = None
    top_logprobs: TopLogprobsField = None
    response_format: ResponseFormatField = None
    tools: ToolsField = None
    tool_choice: ToolChoiceField = None
    parallel_tool_calls: ParallelToolCallsField = None

    @field_validator("logit_bias")
    @classmethod
    def _logit_bias(cls, value: dict[str, float] | None) -> dict[str, float] | None:
        logit_bias_ids(value)
        return value

    @field_validator("top_logprobs")
    @classmethod
    def _top_logprobs_need_logprobs(cls, value: int | None, info: ValidationInfo) -> int | None:
        return top_logprobs_need_logprobs(value, info)

    def sampling_fields(self) -> dict[str, Any]:
        """The request's sampling values as :class:`SamplingParams` names them (None:
        not given; the model's default applies). ``response_format`` becomes a grammar
        at admission."""
        fields = self.model_dump(include=set(SamplingParams.model_fields) - {"logit_bias"})
        return {**fields, "logit_bias": logit_bias_ids(self.logit_bias) or None}

    @field_validator("stop")
    @classmethod
    def _stop_list(cls, value: str | list[str] | None) -> str | list[str] | None:
        return cls.check_stop(value)

    @staticmethod
    def check_stop(value: str | list[str] | None) -> str | list[str] | None:
        """At most 4 non-empty stop strings (shared by every route that takes ``stop``)."""
        items = [value] if isinstance(value, str) else value or []
        if len(items) > 4 or any(not s for s in items):
            raise ValueError("stop takes at most 4 non-empty strings")
        return value


class JobRequest(SamplingFields):
    """Body of ``POST /v1/jobs`` (and ``/invocations``)."""

    model_config = ConfigDict(extra="forbid")

    model: str | None = Field(None, description="Registry model name; default model if absent.")
    messages: list[Message] = Field(min_length=1, description="OpenAI-style chat messages.")
    conversation_id: str | None = Field(
        None, min_length=1, max_length=128,
        description="Continue this conversation (send only the new turn); a new one if absent.",
    )
    persona: Persona | None = Field(
        None, description="`office` or `character` persona; kept on the conversation."
    )
    user_id: str | None = Field(
        None, max_length=128, description="The end user; conversations are listed by it."
    )
    metadata: dict[str, Any] | None = Field(None, description="Caller data, returned as given.")
    webhook: str | None = Field(
        None, max_length=WEBHOOK_URL_MAX,
        description="Called (POST of the job, as `GET /v1/jobs/{id}` shows it) on the "
                    "events of `webhook_events`, signed the Standard Webhooks way with the "
                    "tenant's secret (`GET /v1/webhooks/secret`): headers `webhook-id`, "
                    "`webhook-timestamp`, `webhook-signature`. Retried with backoff on "
                    "errors, timeouts and non-2xx answers. https only in production, where "
                    "hosts resolving to loopback, private or link-local addresses are "
                    "refused unless the operator's allow-list names them.",
        examples=["https://example.com/hooks/chatq"],
    )
    webhook_events: list[WebhookEvent] | None = Field(
        None, min_length=1,
        description="Which events call `webhook`: `start` (the job began running) and "
                    "`completed` (it ended: succeeded, failed, cancelled or expired). "
                    "Default: `[\"completed\"]`.",
    )
    priority: Priority = Field(
        Priority.interactive,
        description="`interactive` (default) or `batch`: within a queue, every waiting "
                    "interactive job starts before any batch job (`position` counts so).",
    )
    cancel_after: float | datetime | None = Field(
        None,
        description="A deadline, as seconds after the submit or an ISO 8601 time with "
                    "its UTC offset. Not started by then: the job never runs and ends "
                    "`expired`. Still running then: it is stopped and ends `failed` with "
                    "`timeout`, its partial output kept. At most the server's longest "
                    "queue wait (`CHATQ_JOBS__MAX_AGE_S`, 24 h by default).",
        examples=[300, "2030-01-01T12:00:00Z"],
    )

    @field_validator("cancel_after", mode="before")
    @classmethod
    def _cancel_after(cls, value: object) -> float | datetime | None:
        return None if value is None else parse_cancel_after(value)

    @field_validator("webhook")
    @classmethod
    def _webhook(cls, value: str | None) -> str | None:
        return None if value is None else check_webhook_url(value)

    @model_validator(mode="after")
    def _events_need_a_webhook(self) -> JobRequest:
        if self.webhook_events is not None and self.webhook is None:
            raise ValueError("webhook_events needs a webhook")
        return self

    def hook_events(self) -> list[WebhookEvent] | None:
        """The events to call the webhook on (None: no webhook)."""
        if self.webhook is None:
            return None
        chosen = set(self.webhook_events or [WebhookEvent.completed])
        return [e for e in WebhookEvent if e in chosen]  # in the order they happen

    def stop_list(self) -> list[str]:
        if self.stop is None:
            return []
        return [self.stop] if isinstance(self.stop, str) else list(self.stop)


class PromptTokensDetails(BaseModel):
    cached_tokens: int = Field(0, description="Prompt tokens reused from the worker's "
                               "prompt cache instead of being read again.")


class Usage(BaseModel):
    prompt_tokens: int = 0
    completion_tokens: int = 0
    total_tokens: int = 0
    prompt_tokens_details: PromptTokensDetails | None = None


class Timings(BaseModel):
    queue_wait_ms: float | None = None
    ttft_ms: float | None = None
    duration_ms: float | None = None
    tokens_per_s: float | None = None
    cached_tokens: int | None = Field(None, description="Prompt tokens the last attempt "
                                      "took from the prompt cache (not read again).")


class JobError(BaseModel):
    code: str
    message: str


class WebhookDelivery(BaseModel):
    """One webhook event of a job and how its delivery went."""

    event: WebhookEvent
    webhook_id: str = Field(description="The `webhook-id` header: the same on every retry.")
    status: Literal["pending", "delivered", "failed"] = Field(
        description="`pending` (not sent yet, or waiting to be retried), `delivered` (a 2xx "
                    "answer) or `failed` (retries given up, or the target was refused).")
    attempts: int = Field(0, description="Requests made so far.")
    last_status: int | None = Field(None, description="HTTP status of the last answer.")
    last_error: str | None = Field(None, description="Why the last attempt failed.")
    last_attempt_at: datetime | None = None
    next_attempt_at: datetime | None = Field(None, description="When it is tried again.")
    delivered_at: datetime | None = None


class FunctionCall(BaseModel):
    name: str
    arguments: str = Field(description="The arguments as a JSON object, in a string.")


class ToolCall(BaseModel):
    id: str
    type: Literal["function"] = "function"
    function: FunctionCall


class Job(BaseModel):
    """What ``GET /v1/jobs/{id}`` returns."""

    id: str
    object: Literal["chat.job"] = "chat.job"
    kind: JobKind = Field(JobKind.chat, description="`chat`, `completion` (a "
                          "`/v1/completions` prompt, fed as it is) or `embedding` (its "
                          "vectors are in the `/v1/embeddings` answer, not here).")
    status: JobStatus
    model: str
    queue: str
    position: int | None = Field(None, description="Jobs ahead of this one while queued.")
    output: str = ""
    logprobs: list[dict[str, Any]] | None = Field(
        None, description="With `logprobs` asked: each output token so far, OpenAI's shape "
                          "(`token`, `logprob`, `bytes`, `top_logprobs`); the tokens add up "
                          "to `output`.")
    tool_calls: list[ToolCall] | None = Field(
        None, description="The calls the answer makes (finish_reason `tool_calls`); "
                          "`output` then holds the raw text they were read from.")
    finish_reason: str | None = None
    usage: Usage | None = None
    timings: Timings = Timings()
    error: JobError | None = None
    attempts: int = 0
    conversation_id: str | None = None
    persisted: bool | None = Field(
        None, description="The turn is in the conversation store (false: queued for retry)."
    )
    history_messages: int | None = Field(
        None, description="Stored conversation messages included in the prompt."
    )
    history_trimmed: int | None = Field(
        None, description="Oldest stored messages left out to fit the model's context."
    )
    metadata: dict[str, Any] | None = None
    priority: Priority = Priority.interactive
    cancel_at: datetime | None = Field(
        None, description="The `cancel_after` deadline: not started by then, the job ends "
                          "`expired`; still running then, `failed` with `timeout`.")
    webhook: str | None = None
    webhook_events: list[WebhookEvent] | None = None
    webhook_deliveries: list[WebhookDelivery] | None = Field(
        None, description="Each webhook event raised so far and its delivery (not part of "
                          "the webhook's own body).")
    created_at: datetime
    started_at: datetime | None = None
    finished_at: datetime | None = None


def utc(ts: float | None) -> datetime | None:
    return None if ts is None else datetime.fromtimestamp(ts, UTC)
