"""The grammars a request asks for, built off the event loop within a time limit.

``response_format`` (a JSON schema) and a forced tool call (``tool_choice``
required or a named function) become GBNF grammars (:mod:`shared.json_grammar`).
Building one is CPU work that grows with the schema, so what must hold:

- It never runs on the event loop: a worker thread does it, at most
  ``CHATQ_LIMITS__GRAMMAR_THREADS`` at once, so one tenant's large schema does not
  stop the API answering everyone else (``/healthz`` included).
- It takes at most ``CHATQ_LIMITS__GRAMMAR_TIMEOUT_S``: past that the request is
  refused (400 naming ``response_format``, or ``tools`` when only tools were
  given). The thread cannot be stopped from outside; it is left to finish and its
  result dropped. :mod:`shared.json_grammar`'s own budgets bound how long that is.
- A schema chatq cannot enforce is refused naming the keyword and its path.
- A forced call is the whole answer, so ``response_format`` beside one is refused
  (:meth:`shared.registry.ModelSpec.resolve_sampling`), unless its schema *is* the
  parameters of the function the call must be (:func:`_the_calls_own`): then there
  is one constraint, the call's grammar enforces it and the answer check validates
  the call's arguments against it. instructor's Responses mode sends both so.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import anyio

from api.services import Services
from shared.errors import OverLimit, UnsupportedParameter
from shared.json_grammar import UnsupportedSchema, response_format_grammar
from shared.schemas import ResponseFormat
from shared.tools import ToolSet, toolset_of

SCHEMA_PATH = "response_format.json_schema.schema"


@dataclass(frozen=True)
class Grammars:
    """The request's checked tool set and the grammars that enforce what it asks."""

    toolset: ToolSet | None = None
    response_format: str | None = None  # enforces response_format (None: free text)
    tool_call: str | None = None  # forces one call of the tools (None: not forced)
    schema: dict[str, Any] | None = None  # response_format's schema (the answer is checked)


def _asks_for_grammar(fmt: ResponseFormat | None, tools: list[Any] | None) -> bool:
    return bool(tools) or (fmt is not None and fmt.type != "text")


def build_now(fmt: ResponseFormat | None, tools: list[Any] | None, tool_choice: Any,
           parallel: bool | None) -> Grammars:
    """The tool set (checked), then each grammar, on this thread (:func:`build` runs
    it in a worker thread)."""
    toolset = toolset_of(tools, tool_choice, parallel)
    if _the_calls_own(fmt, tools, toolset):
        fmt = None
    try:
        grammar = response_format_grammar(fmt, SCHEMA_PATH)
        tool_call = toolset.grammar() if toolset else None
    except UnsupportedSchema as exc:
        raise UnsupportedParameter.of_fields([(exc.path, exc.message)]) from exc
    schema = fmt.json_schema.schema_ if fmt is not None and fmt.json_schema else None
    return Grammars(toolset, grammar, tool_call, schema if grammar is not None else None)


def _the_calls_own(fmt: ResponseFormat | None, tools: list[Any] | None,
                   toolset: ToolSet | None) -> bool:
    """``fmt``'s schema is exactly the parameters of the one function a forced call
    must be (the named one, or the only one): the format asks nothing the call does not."""
    if toolset is None or not toolset.forced or fmt is None or fmt.json_schema is None:
        return False
    given = {t["function"]["name"]: t["function"].get("parameters") for t in tools or []}
    chosen = [n for n in toolset.names() if toolset.named in (None, n)]
    return len(chosen) == 1 and given[chosen[0]] == fmt.json_schema.schema_


_limiters: dict[int, anyio.CapacityLimiter] = {}


def _limiter(threads: int) -> anyio.CapacityLimiter:
    """One limiter per size for the process (grammar threads apart from anyio's default
    pool, so schemas waiting to be built never hold the threads other work needs)."""
    if threads not in _limiters:
        _limiters[threads] = anyio.CapacityLimiter(threads)
    return _limiters[threads]


async def build(svc: Services, fmt: ResponseFormat | None, tools: list[Any] | None,
                tool_choice: Any, parallel: bool | None) -> Grammars:
    """The request's tool set and grammars (see the module's docstring)."""
    if not _asks_for_grammar(fmt, tools):
        return build_now(fmt, tools, tool_choice, parallel)  # nothing to build: no thread
    limits = svc.settings.limits
    try:
        with anyio.fail_after(limits.grammar_timeout_s):
            return await anyio.to_thread.run_sync(
                build_now, fmt, tools, tool_choice, parallel, abandon_on_cancel=True,
                limiter=_limiter(limits.grammar_threads))
    except TimeoutError:
        field = "response_format" if fmt is not None and fmt.type != "text" else "tools"
        raise OverLimit.of_field(
            field, f"the grammar enforcing it took longer than "
                   f"{limits.grammar_timeout_s:g} s to build (CHATQ_LIMITS__GRAMMAR_TIMEOUT_S); "
                   "simplify the schema") from None
