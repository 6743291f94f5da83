"""A Responses API request (``POST /v1/responses``) as chatq work.

The request becomes one :class:`api.admission.Work` and goes through ``admit()``
like every other route: the same checks, the same refusals. What must hold:

- Every field is honoured or refused with a ``400`` naming it (:meth:`ResponseRequest.
  refusals`): built-in tools (web search, file search, images...), ``reasoning``,
  ``include``, and the rest chatq does not do; an unknown field is refused too.
- ``input`` maps onto chat messages: a string is one user message; message items
  (``input_text`` parts), ``function_call`` and ``function_call_output`` items
  become user/system/assistant/tool messages; ``instructions`` leads as a system
  message (it is not stored, so a continued response does not inherit it, as
  OpenAI's does not).
- ``previous_response_id`` continues the stored conversation of that response, of
  this tenant only (another tenant's is ``404``), from its latest turn: chatq's
  conversations are linear, so a response that is no longer the latest of its
  conversation cannot be branched from (``400``). ``conversation`` names a
  conversation directly (the ids of ``/v1/jobs`` ``conversation_id``).
- ``store: false`` makes a job with no conversation; the response is deleted once
  it has answered (so it cannot be continued or read back). ``background`` needs
  ``store`` (as OpenAI's does).
- An error from admission names the Responses field, not the chat one
  (:func:`renamed`): ``text.format.schema``, not ``response_format.json_schema.schema``.
"""

from __future__ import annotations

import re
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

from api import conversations, jobs
from api.admission import Work
from api.services import Services
from shared import responses
from shared.errors import (
    ChatqError,
    InvalidRequest,
    NotFound,
    Unavailable,
    UnsupportedParameter,
)
from shared.lifecycle import JobRecord
from shared.schemas import (
    MaxTokensField,
    Message,
    Priority,
    ResponseFormat,
    TemperatureField,
    TopPField,
    WebhookEvent,
    check_webhook_url,
)

FUNCTION_TOOL_FIELDS = {"type", "name", "description", "parameters", "strict"}
TEXT_PARTS = {"input_text", "output_text", "text"}


class TextConfig(BaseModel):
    """``text``: the answer's format (``text``, ``json_object``, ``json_schema``)."""

    model_config = ConfigDict(extra="forbid")

    format: dict[str, Any] | None = None
    verbosity: str | None = None


class ResponseRequest(BaseModel):
    """OpenAI's ``POST /v1/responses`` body. chatq's extras (``webhook``, ``priority``)
    come in the SDK's ``extra_body``."""

    model_config = ConfigDict(extra="forbid")

    model: str | None = None
    input: str | list[dict[str, Any]]
    instructions: str | None = None
    max_output_tokens: MaxTokensField = None
    temperature: TemperatureField = None
    top_p: TopPField = None
    tools: list[dict[str, Any]] | None = None
    tool_choice: str | dict[str, Any] | None = None
    parallel_tool_calls: bool | None = None
    text: TextConfig | None = None
    store: bool = True
    metadata: dict[str, str] | None = Field(None, max_length=16)
    previous_response_id: str | None = None
    conversation: str | dict[str, Any] | None = None
    background: bool = False
    stream: bool = False
    stream_options: dict[str, Any] | None = None
    user: str | None = Field(None, max_length=256)
    safety_identifier: str | None = Field(None, max_length=256)
    truncation: Literal["auto", "disabled"] | None = None
    # Refused unless absent or neutral (see refusals).
    include: list[str] | None = None
    reasoning: dict[str, Any] | None = None
    prompt: dict[str, Any] | None = None
    prompt_cache_key: str | None = None
    prompt_cache_retention: str | None = None
    service_tier: str | None = None
    max_tool_calls: int | None = None
    top_logprobs: int | None = None
    context_management: Any = None
    # chatq's own (extra_body): a signed webhook when the response ends, its priority.
    webhook: str | None = Field(None, max_length=2048, description=(
        "chatq: called (signed) with response.completed / failed / cancelled / "
        "incomplete when the response ends."))
    priority: Priority = Priority.interactive

    @field_validator("webhook")
    @classmethod
    def _webhook(cls, value: str | None) -> str | None:
        return None if value is None else check_webhook_url(value)

    def refusals(self) -> list[tuple[str, str]]:
        """``(param, why)`` for each parameter asked for that chatq does not implement."""
        problems = [(name, why) for name, why in _NOT_DONE
                    if getattr(self, name) not in (None, [], {}, 0)]
        if self.service_tier not in (None, "auto", "default"):
            problems.append(("service_tier", "chatq has one service tier"))
        if self.text and self.text.verbosity not in (None, "medium"):
            problems.append(("text.verbosity", "chatq cannot steer the answer's length"))
        if self.stream_options and (not self.stream or self.stream_options != {
                "include_obfuscation": False}):
            problems.append(("stream_options", "only {\"include_obfuscation\": false}, "
                                               "with stream"))
        if self.background and not self.store:
            problems.append(("store", "a background response is stored: store must be true"))
        if self.previous_response_id and self.conversation is not None:
            problems.append(("conversation", "give previous_response_id or conversation, "
                                             "not both"))
        if not self.store and (self.previous_response_id or self.conversation is not None):
            problems.append(("store", "a continued conversation is stored: store must be "
                                      "true with previous_response_id or conversation"))
        if not self.store and self.webhook:
            problems.append(("webhook", "a store: false response is deleted when it ends: "
                                        "there would be nothing to deliver"))
        continues = bool(self.previous_response_id or self.conversation is not None)
        if self.truncation == "disabled" and continues:
            problems.append(("truncation", "a continued conversation is trimmed oldest-first "
                                           "to fit the context (truncation auto)"))
        problems += _tool_refusals(self.tools, self.tool_choice)
        return problems


_NOT_DONE = (
    ("include", "chatq has no extra output to include"),
    ("reasoning", "chatq's models are not reasoning models"),
    ("prompt", "chatq keeps no prompt templates"),
    ("prompt_cache_key", "chatq reuses cached prompts by itself, within a tenant"),
    ("prompt_cache_retention", "chatq reuses cached prompts by itself, within a tenant"),
    ("max_tool_calls", "not supported"),
    ("top_logprobs", "logprobs are not offered on this route"),
    ("context_management", "not supported"),
)


def _tool_refusals(tools: list[dict[str, Any]] | None,
                   choice: str | dict[str, Any] | None) -> list[tuple[str, str]]:
    problems = []
    for i, tool in enumerate(tools or []):
        kind = tool.get("type")
        if kind != "function":
            problems.append((f"tools[{i}].type", f"built-in tool {kind!r} is not supported: "
                                                 "chatq offers function tools only"))
    if isinstance(choice, dict) and choice.get("type") != "function":
        problems.append(("tool_choice.type", f"{choice.get('type')!r} is not supported: "
                                             "name a function or use auto, none, required"))
    return problems


# --- the parts of the request ---------------------------------------------------------


def chat_tools(tools: list[dict[str, Any]] | None) -> list[dict[str, Any]] | None:
    """Responses function tools (flat) in chat's shape (``{"type", "function": {...}}``)."""
    if tools is None:
        return None
    out = []
    for i, tool in enumerate(tools):
        unknown = set(tool) - FUNCTION_TOOL_FIELDS
        if unknown:
            raise InvalidRequest.of_field(f"tools[{i}].{sorted(unknown)[0]}", "unknown field")
        out.append({"type": "function",
                    "function": {k: v for k, v in tool.items() if k != "type"}})
    return out


def chat_tool_choice(choice: str | dict[str, Any] | None) -> str | dict[str, Any] | None:
    if isinstance(choice, dict):
        return {"type": "function", "function": {"name": choice.get("name")}}
    return choice


def response_format(text: TextConfig | None) -> ResponseFormat | None:
    """``text.format`` as chat's ``response_format`` (the same grammar enforces it)."""
    fmt = text.format if text else None
    if fmt is None:
        return None
    kind = fmt.get("type")
    if kind == "json_schema":
        schema = {k: fmt[k] for k in ("name", "schema", "description", "strict") if k in fmt}
        extra = set(fmt) - {"type", "name", "schema", "description", "strict"}
        if extra:
            raise InvalidRequest.of_field(f"text.format.{sorted(extra)[0]}", "unknown field")
        return _format({"type": "json_schema", "json_schema": schema})
    if set(fmt) != {"type"} or kind not in ("text", "json_object"):
        raise InvalidRequest.of_field("text.format", "one of {\"type\": \"text\"}, "
                                      "{\"type\": \"json_object\"} or {\"type\": "
                                      "\"json_schema\", \"name\", \"schema\"}")
    return _format({"type": kind})


def _format(raw: dict[str, Any]) -> ResponseFormat:
    try:
        return ResponseFormat.model_validate(raw)
    except ValueError as exc:
        raise InvalidRequest.of_field("text.format", str(exc).splitlines()[-1]) from exc


def _text_of(content: Any, at: str) -> str:
    """A message's content: a string or text parts (anything else refused, named)."""
    if isinstance(content, str):
        return content
    if not isinstance(content, list):
        raise InvalidRequest.of_field(f"{at}.content", "a string or a list of input_text parts")
    texts = []
    for j, part in enumerate(content):
        kind = part.get("type") if isinstance(part, dict) else None
        if kind not in TEXT_PARTS:
            raise UnsupportedParameter.of_fields([(
                f"{at}.content[{j}].type",
                f"content of type {kind!r} is not supported: the model takes text only")])
        if not isinstance(part.get("text"), str):
            raise InvalidRequest.of_field(f"{at}.content[{j}].text", "a string is required")
        texts.append(part["text"])
    return "".join(texts)


def _call(item: dict[str, Any], at: str) -> dict[str, Any]:
    for name in ("call_id", "name", "arguments"):
        if not isinstance(item.get(name), str):
            raise InvalidRequest.of_field(f"{at}.{name}", "a string is required")
    return {"id": item["call_id"], "type": "function",
            "function": {"name": item["name"], "arguments": item["arguments"]}}


def _item_message(item: dict[str, Any], at: str) -> Message | dict[str, Any]:
    """One input item as a message (a function call: the call, to join its turn)."""
    kind = item.get("type", "message")
    if kind == "message":
        role = item.get("role")
        if role not in ("user", "system", "developer", "assistant"):
            raise InvalidRequest.of_field(f"{at}.role",
                                          "one of user, system, developer, assistant")
        text = _text_of(item.get("content"), at)
        return Message(role="system" if role == "developer" else role, content=text)
    if kind == "function_call":
        return _call(item, at)
    if kind == "function_call_output":
        output = item.get("output")
        text = output if isinstance(output, str) else _text_of(output, at)
        if not isinstance(item.get("call_id"), str):
            raise InvalidRequest.of_field(f"{at}.call_id", "a string is required")
        return Message(role="tool", content=text, tool_call_id=item["call_id"])
    raise UnsupportedParameter.of_fields([(f"{at}.type", f"input item of type {kind!r} is "
                                           "not supported: chatq takes message, "
                                           "function_call and function_call_output items")])


def input_messages(body: ResponseRequest) -> list[Message]:
    """``instructions`` and ``input`` as chat messages (consecutive function calls join
    one assistant turn, as chat's ``tool_calls``)."""
    head = [Message(role="system", content=body.instructions)] if body.instructions else []
    if isinstance(body.input, str):
        return [*head, Message(role="user", content=body.input)]
    messages: list[Message] = []
    for i, item in enumerate(body.input):
        made = _item_message(item, f"input[{i}]")
        if isinstance(made, Message):
            messages.append(made)
        elif messages and messages[-1].role == "assistant" and messages[-1].tool_calls:
            messages[-1].tool_calls = [*messages[-1].tool_calls, made]
        else:
            messages.append(Message(role="assistant", content="", tool_calls=[made]))
    if not messages:
        raise InvalidRequest.of_field("input", "at least one input item is required")
    return [*head, *messages]


def echo(body: ResponseRequest) -> dict[str, Any]:
    """What the response object repeats of its request (kept on the job)."""
    continues = bool(body.previous_response_id or body.conversation is not None)
    return {
        "instructions": body.instructions, "max_output_tokens": body.max_output_tokens,
        "previous_response_id": body.previous_response_id,
        "conversation": body.conversation is not None, "store": body.store,
        "background": body.background, "tools": body.tools or [],
        "tool_choice": body.tool_choice or "auto",
        "parallel_tool_calls": body.parallel_tool_calls is not False,
        "text": ({"format": body.text.format} if body.text and body.text.format else None),
        "truncation": body.truncation or ("auto" if continues else "disabled"),
        "metadata": body.metadata or {}, "user": body.user,
        "safety_identifier": body.safety_identifier,
        "instructions_given": bool(body.instructions),
    }


def _conversation_id(raw: str | dict[str, Any] | None) -> str | None:
    value = raw.get("id") if isinstance(raw, dict) else raw
    if raw is not None and (not isinstance(value, str) or not value):
        raise InvalidRequest.of_field("conversation", "a conversation id or {\"id\": ...}")
    return value


async def to_work(svc: Services, body: ResponseRequest, tenant: str) -> Work:
    """The request as chatq work, after the refusals and the previous response's check."""
    problems = body.refusals()
    if problems:
        raise UnsupportedParameter.of_fields(problems)
    conversation_id = _conversation_id(body.conversation)
    if body.previous_response_id:
        conversation_id = await continued(svc, body.previous_response_id, tenant)
    sampling = {k: v for k, v in (("max_tokens", body.max_output_tokens),
                                  ("temperature", body.temperature), ("top_p", body.top_p))
                if v is not None}
    return Work(
        model=body.model, messages=input_messages(body), sampling=sampling,
        response_format=response_format(body.text), tools=chat_tools(body.tools),
        tool_choice=chat_tool_choice(body.tool_choice),
        parallel_tool_calls=body.parallel_tool_calls, conversation_id=conversation_id,
        metadata=_metadata(body), end_user=body.user,
        priority=body.priority, webhook=body.webhook,
        webhook_events=[WebhookEvent.completed] if body.webhook else None,
        store=body.store, response=echo(body))


def _metadata(body: ResponseRequest) -> dict[str, str] | None:
    """The caller's metadata, with ``safety_identifier`` when given (``user`` joins it in
    the job's, as on chat completions)."""
    extra = {"safety_identifier": body.safety_identifier} if body.safety_identifier else {}
    return {**(body.metadata or {}), **extra} or None


async def fetch(svc: Services, resp_id: str, tenant: str) -> tuple[JobRecord, str]:
    """A response of this tenant and its output so far (404 for anything else)."""
    job = responses.job_id(resp_id)
    if job is None:
        raise NotFound(f"no response {resp_id!r}")
    try:
        record, output = await jobs.fetch(svc, job, tenant)
    except NotFound:
        raise NotFound(f"no response {resp_id!r}") from None
    if record.response is None:  # a job of another route
        raise NotFound(f"no response {resp_id!r}")
    return record, output


async def continued(svc: Services, resp_id: str, tenant: str) -> str:
    """The conversation a new response continues from ``resp_id``: it must have
    answered, have been stored, and be its conversation's latest turn."""
    record, _ = await fetch(svc, resp_id, tenant)
    field = "previous_response_id"
    if not record.status.terminal:
        raise InvalidRequest.of_field(field, f"response {resp_id} is still "
                                             f"{responses.status(record)}: wait for it to end")
    if responses.status(record) not in ("completed", "incomplete"):
        raise InvalidRequest.of_field(field, f"response {resp_id} is "
                                             f"{responses.status(record)}: it has no answer to "
                                             "continue from")
    if record.conversation_id is None:
        raise InvalidRequest.of_field(field, f"response {resp_id} was not stored "
                                             "(store: false) and cannot be continued")
    if record.persisted is False:  # parked in the outbox: MongoDB did not take it yet
        raise Unavailable(f"response {resp_id}'s turn is not stored yet (MongoDB is "
                          "unreachable); retry shortly")
    latest = await conversations.store(svc).latest_job(record.conversation_id, tenant)
    if latest is not None and latest != record.id:
        raise InvalidRequest.of_field(
            field, f"response {resp_id} is not the latest turn of its conversation: chatq "
                   "continues a conversation from its latest response only")
    return record.conversation_id


# --- errors named as this route names its fields -----------------------------------------


_RENAMES = (
    (re.compile(r"response_format\.json_schema\.schema"), "text.format.schema"),
    (re.compile(r"response_format\.json_schema"), "text.format"),
    (re.compile(r"response_format"), "text.format"),
    (re.compile(r"(tools\[\d+\])\.function\."), r"\1."),
    (re.compile(r"tool_choice\.function\.name"), "tool_choice.name"),
    (re.compile(r"\bmax_tokens\b"), "max_output_tokens"),
    (re.compile(r"\bmessages\b"), "input"),
)


def _rename(text: str) -> str:
    for pattern, new in _RENAMES:
        text = pattern.sub(new, text)
    return text


def renamed(exc: ChatqError) -> ChatqError:
    """``exc`` with the chat field names in its message and details as this route's."""
    exc.message = _rename(exc.message)
    exc.args = (exc.message,)
    if isinstance(exc.details, list):
        exc.details = [{**d, "field": _rename(str(d["field"]))}
                       if isinstance(d, dict) and "field" in d else d for d in exc.details]
    return exc


async def input_items(svc: Services, record: JobRecord) -> list[dict[str, Any]]:
    """Every item the response's model read, oldest first: the stored conversation
    before it, then its own input (less ``instructions``)."""
    items: list[dict[str, Any]] = []
    if record.conversation_id and not record.fresh_conversation:
        stored = await conversations.store(svc).turns_before(
            record.conversation_id, record.tenant, record.created_at)
        by_job: dict[str, list[dict[str, Any]]] = {}
        for m in stored:
            by_job.setdefault(str(m["job_id"]), []).append(m)
        for job, turn in by_job.items():
            items += responses.input_items(job, turn)
    own = list(record.messages)
    if (record.response or {}).get("instructions_given"):
        own = own[1:]
    return items + responses.input_items(record.id, own)
