"""A remote OpenAI-compatible server (OpenAI, Azure OpenAI, vLLM, llama.cpp's
servers) behind the :mod:`workers.engine` seam: the engine of a queue whose registry
model names an ``upstream`` (see :mod:`shared.upstream`). No GGUF file is loaded.

Each generation is one streaming ``POST /chat/completions`` (httpx), run as a task on
one asyncio loop that the engine keeps in a thread of its own; up to ``slots`` are in
flight at once. The engine has no tokenizer (``prompter`` and ``context_size`` are
None), so the task layer sends the whole conversation as messages and the upstream
checks its context. What must hold:

- ``submit`` returns at once; text reaches the job as the upstream streams it.
- ``cancel`` (and the job's deadline) ends the task, which closes the HTTP response:
  the upstream sees its client go and stops generating.
- A 429, a 5xx, a timeout (``timeout_s`` without a byte) or a connection error before
  the first token is retried with backoff (``retries`` more tries, ``backoff_s``
  doubling, the upstream's Retry-After honoured), then the job fails with
  ``upstream_error`` naming the last status. After text was streamed nothing is
  retried (the answer cannot be resumed; vLLM's excepted on redelivery, see below).
  Refused credentials (401/403) and other refusals fail at once: ``upstream_error``,
  or ``upstream_rejected`` with the upstream's message for a request it refused
  (400, 413, 422: e.g. a prompt over its context).
- The key is sent in a header only; whatever the upstream says passes
  :func:`shared.upstream.redact` before it reaches a job or a log line.
- Usage is the upstream's when it reports it (``stream_options.include_usage``):
  a last piece without text corrects the token count, and the outcome carries its
  prompt and completion tokens. Without a report, each streamed content chunk (or
  each token of its logprobs) counts as a token and the prompt count is unknown.
- An embedding job is one ``POST /embeddings`` of all its texts (``Engine.embed``),
  in a slot like a generation; it is not retried (its texts are small to send again
  by resubmitting), and its refusals map as a generation's do.
- A redelivered job that already streamed text continues it only on vLLM
  (``continue_final_message``); other upstreams cannot continue a partial answer,
  and the job fails saying so rather than repeat the text.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import queue
import threading
import time
import traceback
from collections.abc import AsyncIterator, Callable, Iterator, Mapping
from contextlib import asynccontextmanager
from typing import Any

import httpx

from shared.registry import ModelSpec
from shared.schemas import SamplingParams
from shared.upstream import EXTRA_PARAMS, MAX_TOKENS_FIELD, NEUTRAL, UpstreamOptions, redact
from workers.engine import (
    EmbeddingError,
    Embeddings,
    Engine,
    Generation,
    GenRequest,
    Outcome,
    Piece,
    TokenLogprob,
    TopLogprob,
    drain,
)

log = logging.getLogger(__name__)

MAX_WAIT_S = 60.0  # the longest backoff or Retry-After between two tries
RETRY_STATUSES = frozenset({408, 409, 425, 429})  # besides every 5xx
REJECT_STATUSES = frozenset({400, 413, 422})  # the request itself was refused
MAX_MESSAGE = 1000  # characters of an upstream's error message kept in the job


class UpstreamFailure(Exception):
    """The job fails with ``code`` (upstream_error, upstream_rejected,
    unsupported_parameter) and ``message`` (already redacted)."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message


class _Retryable(Exception):
    """This try failed in a way another try may not: ``reason`` names how."""

    def __init__(self, reason: str, retry_after: float | None = None) -> None:
        super().__init__(reason)
        self.reason = reason
        self.retry_after = retry_after


def request_body(options: UpstreamOptions, params: SamplingParams,
                 messages: list[dict[str, str]]) -> dict[str, Any]:
    """The ``/chat/completions`` body: OpenAI's sampling fields, and those beyond them
    that this kind of upstream takes (by its names) when they are not neutral."""
    body: dict[str, Any] = {
        "messages": messages, "stream": True, "stream_options": {"include_usage": True},
        "temperature": params.temperature, "top_p": params.top_p,
        MAX_TOKENS_FIELD[options.kind]: params.max_tokens,
    }
    optional = {
        "model": options.model, "stop": params.stop or None, "seed": params.seed,
        "presence_penalty": params.presence_penalty or None,
        "frequency_penalty": params.frequency_penalty or None,
        "logit_bias": {str(k): v for k, v in params.logit_bias.items()} or None,
        "logprobs": params.logprobs or None,
        "top_logprobs": params.top_logprobs if params.logprobs and params.top_logprobs
        else None,
    }
    body.update({k: v for k, v in optional.items() if v is not None})
    for name, wire in EXTRA_PARAMS[options.kind].items():
        value = getattr(params, name)
        if value != NEUTRAL[name]:
            body[wire] = value
    return body


def _retry_after(response: httpx.Response) -> float | None:
    value = response.headers.get("retry-after", "").strip()
    try:
        return min(max(float(value), 0.0), MAX_WAIT_S)
    except ValueError:
        return None  # absent, or an HTTP date: the backoff decides


def _error_message(response: httpx.Response) -> str:
    """The upstream's own words: OpenAI's ``error.message``, FastAPI's ``detail``,
    else the start of the body."""
    try:
        body = response.json()
    except ValueError:
        return response.text[:MAX_MESSAGE]
    error = body.get("error") if isinstance(body, dict) else None
    if isinstance(error, dict) and error.get("message"):
        return str(error["message"])[:MAX_MESSAGE]
    if isinstance(body, dict):
        for key in ("error", "detail", "message"):
            if body.get(key):
                return str(body[key])[:MAX_MESSAGE]
    return response.text[:MAX_MESSAGE]


def _logprobs(raw: Any) -> list[TokenLogprob] | None:
    """OpenAI's ``choices[0].logprobs.content`` as the engine seam's logprobs."""
    content = raw.get("content") if isinstance(raw, dict) else None
    if not content:
        return None

    def utf8(entry: dict[str, Any]) -> list[int]:
        return list(entry.get("bytes") or str(entry.get("token", "")).encode())

    return [TokenLogprob(token=str(e.get("token", "")), logprob=float(e.get("logprob", 0.0)),
                         bytes=utf8(e),
                         top=[TopLogprob(token=str(t.get("token", "")),
                                         logprob=float(t.get("logprob", 0.0)), bytes=utf8(t))
                              for t in e.get("top_logprobs") or []])
            for e in content]


def _embeddings(body: Any, count: int) -> Embeddings:
    """The vectors (in input order) and prompt tokens of an ``/embeddings`` answer."""
    try:
        data = sorted(body["data"], key=lambda d: int(d["index"]))
        vectors = [[float(x) for x in d["embedding"]] for d in data]
        prompt_tokens = int((body.get("usage") or {}).get("prompt_tokens") or 0)
    except (KeyError, TypeError, ValueError, AttributeError) as exc:
        raise EmbeddingError(f"the upstream's embeddings answer is malformed ({exc!r})",
                             code="upstream_error") from exc
    if len(vectors) != count:
        raise EmbeddingError(f"the upstream returned {len(vectors)} vectors for {count} "
                             "inputs", code="upstream_error")
    return Embeddings(vectors=vectors, prompt_tokens=prompt_tokens)


class UpstreamGeneration(Generation):
    def __init__(self, engine: UpstreamEngine, request: GenRequest) -> None:
        self.engine = engine
        self.request = request
        self.outcome = Outcome()
        self._out: queue.Queue[Piece | None] = queue.Queue()
        self._cancel = threading.Event()
        self._task: asyncio.Task[None] | None = None
        self._counted = 0  # tokens the pieces so far said they hold
        self._finish: str | None = None
        self._usage: dict[str, Any] = {}
        self.done = threading.Event()
        asyncio.run_coroutine_threadsafe(self._run(), engine.loop)

    # --- the task layer's side (its own thread) ------------------------------------

    def pieces(self, poll_s: float) -> Iterator[Piece | None]:
        return drain(self._out, poll_s)

    def cancel(self) -> None:
        if self._cancel.is_set():
            return
        self._cancel.set()
        with contextlib.suppress(RuntimeError):  # the loop is closed: it has ended
            self.engine.loop.call_soon_threadsafe(self._interrupt)

    def _interrupt(self) -> None:
        if self._task is not None and not self._task.done():
            self._task.cancel()  # closes the HTTP response: the upstream stops

    # --- the loop's side ------------------------------------------------------------

    async def _run(self) -> None:
        self._task = asyncio.current_task()
        ctx = {"job_id": self.request.job_id, "model": self.engine.model}
        try:
            if self._cancel.is_set():
                raise asyncio.CancelledError
            async with self.engine.slot(), asyncio.timeout_at(self.request.deadline):
                await self._attempts(ctx)
        except asyncio.CancelledError:
            self.outcome.finish_reason = "cancelled"
        except TimeoutError:
            self.outcome.finish_reason = "timeout"
        except UpstreamFailure as exc:
            self._fail(exc.code, exc.message, ctx)
        except Exception as exc:  # a bug here must end the job, not leave it hanging
            trace = "".join(traceback.format_exception(exc))
            log.error("upstream generation failed",
                      extra={**ctx, "traceback": self.engine.redact(trace)})
            self._fail("upstream_error", self.engine.redact(f"{type(exc).__name__}: {exc}"),
                       ctx)
        finally:
            self._out.put(None)
            self.done.set()
            self.engine.forget(self)

    def _fail(self, code: str, message: str, ctx: dict[str, Any]) -> None:
        self.outcome.finish_reason, self.outcome.error_code = "error", code
        self.outcome.error = message
        self.outcome.completion_tokens = self._counted
        log.warning("upstream failed the job", extra={**ctx, "code": code, "error": message})

    async def _attempts(self, ctx: dict[str, Any]) -> None:
        body = self._body()
        if body is None:  # nothing left to generate (a redelivered job at its max_tokens)
            self.outcome.finish_reason = "length"
            return
        tries = self.engine.options.retries + 1
        for attempt in range(1, tries + 1):
            try:
                await self._stream(body)
                self._finished()
                return
            except _Retryable as exc:
                if self._counted:
                    raise UpstreamFailure("upstream_error", (
                        f"the upstream's answer broke off after {self._counted} tokens "
                        f"({exc.reason}); a streamed answer cannot be resumed")) from exc
                if attempt == tries:
                    raise UpstreamFailure("upstream_error", (
                        f"the upstream failed {tries} time(s); the last: {exc.reason}")) from exc
                wait = exc.retry_after
                if wait is None:
                    wait = min(self.engine.options.backoff_s * 2 ** (attempt - 1), MAX_WAIT_S)
                log.warning("upstream request failed; retrying", extra={
                    **ctx, "attempt": attempt, "tries": tries, "reason": exc.reason,
                    "retry_in_s": round(wait, 3)})
                await asyncio.sleep(wait)

    def _body(self) -> dict[str, Any] | None:
        options, request = self.engine.options, self.request
        problems = options.unsupported(request.params)
        if problems:  # admission refuses these; a job queued before a registry change
            raise UpstreamFailure("unsupported_parameter",
                                  "; ".join(f"{f}: {why}" for f, why in problems))
        if request.params.max_tokens <= 0:
            return None
        messages = list(request.messages)
        extra: dict[str, Any] = {}
        if request.continuation:
            if options.kind != "vllm":
                raise UpstreamFailure("upstream_error", (
                    "an earlier attempt of this job was cut off after it had streamed text, "
                    f"and a {options.kind} upstream cannot continue a partial answer"))
            messages.append({"role": "assistant", "content": request.continuation})
            extra = {"continue_final_message": True, "add_generation_prompt": False}
        return {**request_body(options, request.params, messages), **extra}

    async def _stream(self, body: dict[str, Any]) -> None:
        engine = self.engine
        try:
            async with engine.client.stream("POST", engine.options.endpoint, json=body,
                                            headers=engine._headers) as response:
                if response.status_code != 200:
                    await response.aread()
                    raise self._refusal(response)
                await self._read(response)
        except httpx.TimeoutException as exc:
            raise _Retryable(f"{type(exc).__name__}: nothing from the upstream for "
                             f"timeout_s = {engine.options.timeout_s:g} s") from exc
        except httpx.TransportError as exc:
            raise _Retryable(engine.redact(f"{type(exc).__name__}: {exc}")) from exc

    def _refusal(self, response: httpx.Response) -> Exception:
        status = response.status_code
        said = f"HTTP {status} {response.reason_phrase}".strip()
        if status in RETRY_STATUSES or status >= 500:
            return _Retryable(said, _retry_after(response))
        if status in (401, 403):
            env = self.engine.options.api_key_env
            where = f"the key in ${env}" if env else "its key (the registry names no api_key_env)"
            return UpstreamFailure("upstream_error", (
                f"the upstream refused chatq's credentials ({said}); check {where}"))
        message = self.engine.redact(_error_message(response))
        if status in REJECT_STATUSES:
            return UpstreamFailure("upstream_rejected",
                                   f"the upstream refused the request ({said}): {message}")
        return UpstreamFailure("upstream_error", f"the upstream answered {said}: {message}")

    async def _read(self, response: httpx.Response) -> None:
        """The server-sent events of one try, until ``[DONE]`` (or the stream ends)."""
        async for line in response.aiter_lines():
            if not line.startswith("data:"):
                continue
            data = line[5:].strip()
            if data == "[DONE]":
                return
            try:
                chunk = json.loads(data)
            except ValueError as exc:
                raise _Retryable("a malformed event in the upstream's stream") from exc
            if isinstance(chunk, dict):
                self._take(chunk)
        if self._finish is None:
            raise _Retryable("the upstream's stream ended before the answer was complete")

    def _take(self, chunk: dict[str, Any]) -> None:
        if chunk.get("error"):
            self._stream_error(chunk["error"])
        if isinstance(chunk.get("usage"), dict):
            self._usage = chunk["usage"]
        for choice in chunk.get("choices") or []:
            if not isinstance(choice, dict) or choice.get("index", 0) != 0:
                continue
            text = (choice.get("delta") or {}).get("content") or ""
            logprobs = _logprobs(choice.get("logprobs"))
            if text or logprobs:
                tokens = len(logprobs) if logprobs else 1
                self._counted += tokens
                self._out.put(Piece(text, tokens, logprobs))
            if choice.get("finish_reason"):
                self._finish = str(choice["finish_reason"])

    def _stream_error(self, error: Any) -> None:
        """An error event in the middle of a stream (vLLM, OpenAI)."""
        message = error.get("message") if isinstance(error, dict) else error
        said = self.engine.redact(str(message or error))[:MAX_MESSAGE]
        code = str(error.get("code", "")) if isinstance(error, dict) else ""
        if code in ("400", "invalid_request_error", "context_length_exceeded"):
            raise UpstreamFailure("upstream_rejected", f"the upstream refused the request: {said}")
        raise _Retryable(f"the upstream reported an error: {said}")

    def _finished(self) -> None:
        """The answer is complete: take the upstream's usage when it reported one."""
        outcome, usage = self.outcome, self._usage
        outcome.finish_reason = self._finish or "stop"
        reported = usage.get("completion_tokens")
        if isinstance(reported, int):
            if reported != self._counted:
                self._out.put(Piece("", reported - self._counted))
            outcome.completion_tokens = reported
        else:
            outcome.completion_tokens = self._counted
        if isinstance(usage.get("prompt_tokens"), int):
            outcome.prompt_tokens = usage["prompt_tokens"]


class UpstreamEngine(Engine):
    """Forwards up to ``slots`` jobs at once to the model's upstream."""

    def __init__(self, spec: ModelSpec, environ: Mapping[str, str] | None = None,
                 transport: httpx.AsyncBaseTransport | None = None) -> None:
        if spec.upstream is None:
            raise ValueError(f"model {spec.name!r} names no upstream")
        self.spec = spec
        self.options = spec.upstream
        self.model = spec.name
        self.slots = spec.slots
        self.context_size = None  # the upstream's own; it checks it
        self.prompter = None  # no tokenizer here: the task layer sends messages
        env = self.options.api_key_env
        key = (environ if environ is not None else os.environ).get(env, "") if env else ""
        self._key = key.strip() or None  # a key read from a file often ends in a newline
        self._headers = self.options.auth_headers(self._key)
        self.client = httpx.AsyncClient(
            timeout=httpx.Timeout(self.options.timeout_s), follow_redirects=False,
            limits=httpx.Limits(max_connections=spec.slots,
                                max_keepalive_connections=spec.slots),
            transport=transport)
        self.loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self.loop.run_forever, daemon=True,
                                        name=f"chatq-upstream-{spec.name}")
        self._thread.start()
        self._slots = asyncio.Semaphore(spec.slots)
        self._busy = 0
        self._live: set[UpstreamGeneration] = set()
        self._lock = threading.Lock()
        self.started_at = time.time()
        log.info("upstream engine ready", extra={
            "model": spec.name, "upstream_kind": self.options.kind,
            "upstream_url": self.options.public_url, "upstream_model": self.options.model,
            "slots": spec.slots})

    def __repr__(self) -> str:  # never the headers (they hold the key)
        return f"UpstreamEngine({self.model!r}, {self.options.public_url!r})"

    def redact(self, text: str) -> str:
        return redact(text, self._key)

    @asynccontextmanager
    async def slot(self) -> AsyncIterator[None]:
        """One of ``slots`` requests in flight (on the loop)."""
        async with self._slots:
            self._busy += 1
            try:
                yield
            finally:
                self._busy -= 1

    def submit(self, request: GenRequest) -> Generation:
        with self._lock:
            generation = UpstreamGeneration(self, request)
            self._live.add(generation)
        return generation

    def embed(self, texts: list[str], deadline: float | None = None,
              stop: Callable[[], bool] | None = None) -> Embeddings:
        """One ``POST /embeddings`` for all the texts, in one of the ``slots``: the
        upstream's vectors as it sends them and its usage. Not retried: a refusal fails
        the job with ``upstream_rejected`` and its message, anything else with
        ``upstream_error``; the deadline with ``timeout``. One request has no "between
        texts": ``stop`` is not asked (the request's own timeout bounds it)."""
        timeout = None if deadline is None else max(deadline - time.monotonic(), 0.0)
        future = asyncio.run_coroutine_threadsafe(self._embed(texts), self.loop)
        try:
            return future.result(timeout)
        except TimeoutError as exc:
            future.cancel()
            raise EmbeddingError("embedding exceeded the job time limit",
                                 code="timeout") from exc

    async def _embed(self, texts: list[str]) -> Embeddings:
        body: dict[str, Any] = {"input": texts, "encoding_format": "float"}
        if self.options.model:
            body["model"] = self.options.model
        async with self.slot():
            try:
                response = await self.client.post(self.options.embeddings_endpoint,
                                                   json=body, headers=self._headers)
            except httpx.HTTPError as exc:
                raise EmbeddingError(self.redact(f"the upstream could not be reached: "
                                                 f"{type(exc).__name__}: {exc}"),
                                     code="upstream_error") from exc
        if response.status_code != 200:
            said = f"HTTP {response.status_code} {response.reason_phrase}".strip()
            code = ("upstream_rejected" if response.status_code in REJECT_STATUSES
                    else "upstream_error")
            raise EmbeddingError(f"the upstream answered {said}: "
                                 f"{self.redact(_error_message(response))}", code=code)
        try:
            answer = response.json()
        except ValueError as exc:
            raise EmbeddingError("the upstream's embeddings answer is not JSON",
                                 code="upstream_error") from exc
        return _embeddings(answer, len(texts))

    def forget(self, generation: UpstreamGeneration) -> None:
        with self._lock:
            self._live.discard(generation)

    def busy(self) -> int:
        return self._busy

    def info(self) -> dict[str, str]:
        """The upstream as an operator may see it: no credentials."""
        return {
            "engine": "upstream",
            "loaded_at": str(self.started_at),
            "upstream_kind": self.options.kind,
            "upstream_url": self.options.public_url,
            "upstream_model": self.options.model or "",
            "upstream_busy": str(self.busy()),
        }

    def close(self) -> None:
        with self._lock:
            live = list(self._live)
        for generation in live:
            generation.cancel()
        for generation in live:
            generation.done.wait(5)
        if not self.loop.is_closed():
            asyncio.run_coroutine_threadsafe(self.client.aclose(), self.loop).result(5)
            # httpx's byte streams of responses left early are async generators: close
            # them on their loop, not in a garbage collector after it is gone.
            asyncio.run_coroutine_threadsafe(self.loop.shutdown_asyncgens(), self.loop).result(5)
            self.loop.call_soon_threadsafe(self.loop.stop)
            self._thread.join(5)
            self.loop.close()
