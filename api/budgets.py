"""Input budgets: every size a caller controls has a limit (``CHATQ_LIMITS__*``,
:class:`shared.settings.LimitSettings`), checked by admission before any expensive
work (tokenizing, grammar building, Redis). Each refusal is a 400 naming the field
and the limit (:class:`shared.errors.OverLimit`); the request body's own size is
refused earlier, unread (:class:`BodyLimit`, 413).

Why each one: a request's cost must not grow without bound with what one caller
sends. Text is tokenized (CPU), schemas become grammars (CPU, and memory in the
job's Redis hash and the worker), metadata and stop strings are stored in the job
and returned on every read.

A prompt that cannot fit the model's context is refused by its character count
before it is tokenized: a token stands for at most ``max_chars_per_token``
characters, so a text of more than ``context_size x`` that many characters cannot
fit, whatever its tokens. (``max_tokens`` is left out of this bound so that a text
that might fit gets the exact count and OpenAI's wording of an overflow.) The
count leaves out leading and trailing whitespace (chat templates may trim it), and
applies only to models chatq tokenizes (an upstream's context is its server's).
"""

from __future__ import annotations

import json
from typing import TYPE_CHECKING, Any

from api.grammars import SCHEMA_PATH
from shared.errors import BodyTooLarge, OverLimit
from shared.json_grammar import UnsupportedSchema, check_counts
from shared.schemas import JobKind
from shared.settings import LimitSettings

if TYPE_CHECKING:
    from api.admission import Work
    from shared.registry import ModelSpec

TEXT_FIELDS = {JobKind.chat: "messages", JobKind.completion: "prompt",
               JobKind.embedding: "input"}


def _refuse(field: str, message: str) -> OverLimit:
    return OverLimit(f"invalid request: {field}: {message}",
                     details=[{"field": field, "message": message, "type": OverLimit.code}])


def _json_chars(value: Any) -> int:
    return len(json.dumps(value, separators=(",", ":"), default=str))


def check(work: Work, limits: LimitSettings) -> None:
    """Every size of ``work`` within ``limits``; the first one over is refused."""
    _messages(work, limits)
    _stop(work.sampling.get("stop"), limits)
    check_metadata(work.metadata, limits)
    _tools(work.tools, limits)
    _schema(work, limits)
    bias = work.sampling.get("logit_bias") or {}
    if len(bias) > limits.max_logit_bias:
        raise _refuse("logit_bias", f"at most {limits.max_logit_bias} entries "
                                    f"({len(bias)} given)")


def texts(work: Work) -> list[str]:
    """The text a request brings: its messages' contents, or its inputs."""
    return [m.content for m in work.messages] + list(work.inputs)


def _messages(work: Work, limits: LimitSettings) -> None:
    if len(work.messages) > limits.max_messages:
        raise _refuse("messages", f"at most {limits.max_messages} messages "
                                  f"({len(work.messages)} given)")
    chars = sum(len(t) for t in texts(work))
    if chars > limits.max_input_chars:
        raise _refuse(TEXT_FIELDS[work.kind], f"at most {limits.max_input_chars} characters "
                                              f"of text in one request ({chars} given)")


def _stop(stop: str | list[str] | None, limits: LimitSettings) -> None:
    items = [stop] if isinstance(stop, str) else stop or []
    longest = max((len(s) for s in items), default=0)
    if longest > limits.max_stop_chars:
        raise _refuse("stop", f"each stop string is at most {limits.max_stop_chars} "
                              f"characters ({longest} given)")


def check_metadata(metadata: dict[str, Any] | None, limits: LimitSettings) -> None:
    """OpenAI's limits: so many pairs, keys and values of so many characters (a value
    that is not a string counts as its JSON text)."""
    if not metadata:
        return
    if len(metadata) > limits.max_metadata_pairs:
        raise _refuse("metadata", f"at most {limits.max_metadata_pairs} pairs "
                                  f"({len(metadata)} given)")
    for key, value in metadata.items():
        if len(key) > limits.max_metadata_key_chars:
            raise _refuse("metadata", f"keys are at most {limits.max_metadata_key_chars} "
                                      f"characters ({len(key)} given)")
        size = len(value) if isinstance(value, str) else _json_chars(value)
        if size > limits.max_metadata_value_chars:
            raise _refuse(f"metadata.{key}", f"values are at most "
                                             f"{limits.max_metadata_value_chars} characters "
                                             f"({size} given)")


def _tools(tools: list[dict[str, Any]] | None, limits: LimitSettings) -> None:
    if not tools:
        return
    if len(tools) > limits.max_tools:
        raise _refuse("tools", f"at most {limits.max_tools} tools ({len(tools)} given)")
    size = _json_chars(tools)
    if size > limits.max_tools_chars:
        raise _refuse("tools", f"at most {limits.max_tools_chars} characters of JSON "
                               f"({size} given)")


def _schema(work: Work, limits: LimitSettings) -> None:
    fmt = work.response_format
    if fmt is None or fmt.json_schema is None:
        return
    size = _json_chars(fmt.json_schema.schema_)
    if size > limits.max_schema_chars:
        try:
            check_counts(fmt.json_schema.schema_, SCHEMA_PATH)
        except UnsupportedSchema as e:
            raise _refuse(e.path, e.message) from None
        raise _refuse(SCHEMA_PATH,
                      f"at most {limits.max_schema_chars} characters of JSON ({size} given)")


def check_fits(work: Work, spec: ModelSpec, limits: LimitSettings) -> None:
    """Refuse, before tokenizing, a text too long to fit ``spec``'s context whatever its
    tokens (see the module's docstring)."""
    if not spec.tokenizer_local:
        return
    most = spec.context_size * limits.max_chars_per_token
    field = TEXT_FIELDS[work.kind]
    if work.kind is JobKind.chat:
        lengths = [sum(len(t.strip()) for t in texts(work))]
    else:
        lengths = [len(t.strip()) for t in work.inputs]
    for i, chars in enumerate(lengths):
        if chars > most:
            where = f"{field}[{i}]" if len(lengths) > 1 else field
            raise _refuse(where, f"{chars} characters cannot fit the context of "
                                 f"{spec.name} ({spec.context_size} tokens of at most "
                                 f"{limits.max_chars_per_token} characters: "
                                 f"CHATQ_LIMITS__MAX_CHARS_PER_TOKEN)")


class BodyLimit:
    """ASGI middleware: a request body over ``max_bytes`` is refused with 413 before it
    is parsed: at once when ``Content-Length`` says so, else as soon as the bytes read
    pass it. A body within it is read once here and handed on as it came."""

    def __init__(self, app: Any, max_bytes: int, answer: Any,
                 exempt: tuple[str, ...] = ()) -> None:
        self.app = app
        self.max_bytes = max_bytes
        self.answer = answer  # (path, BodyTooLarge) -> an ASGI response
        self.exempt = exempt  # paths that stream their body and check its size themselves

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        if (scope["type"] != "http" or scope["method"] not in ("POST", "PUT", "PATCH")
                or scope["path"] in self.exempt):
            await self.app(scope, receive, send)
            return
        declared = dict(scope["headers"]).get(b"content-length")
        if declared is not None and declared.isdigit() and int(declared) > self.max_bytes:
            await self._refuse(scope, receive, send)
            return
        body = await self._read(receive)
        if body is None:
            await self._refuse(scope, receive, send)
            return
        await self.app(scope, _replay(body, receive), send)

    async def _read(self, receive: Any) -> bytes | None:
        """The whole body, or None once it passes the limit."""
        chunks: list[bytes] = []
        size = 0
        while True:
            message = await receive()
            if message["type"] != "http.request":
                return b"".join(chunks)  # the client left: the app sees the disconnect
            chunks.append(message.get("body", b""))
            size += len(chunks[-1])
            if size > self.max_bytes:
                return None
            if not message.get("more_body", False):
                return b"".join(chunks)

    async def _refuse(self, scope: Any, receive: Any, send: Any) -> None:
        exc = BodyTooLarge(f"the request body is over {self.max_bytes} bytes "
                           "(CHATQ_LIMITS__MAX_BODY_BYTES)",
                           details=[{"field": "body", "message": f"at most {self.max_bytes} "
                                     "bytes", "type": BodyTooLarge.code}])
        await self.answer(scope["path"], exc)(scope, receive, send)


def _replay(body: bytes, receive: Any) -> Any:
    sent = False

    async def replay() -> Any:
        nonlocal sent
        if not sent:
            sent = True
            return {"type": "http.request", "body": body, "more_body": False}
        return await receive()

    return replay
