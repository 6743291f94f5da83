"""Tools (function calling): the request's functions, how the model sees them, and
how its answer becomes OpenAI ``tool_calls``.

What must always hold:

- A request's ``tools`` / ``tool_choice`` / tool messages are checked once, at
  submit (:func:`toolset_of`, :func:`check_messages`): anything wrong is a ``400``
  naming the parameter (``tools[0].function.parameters.properties.n.minimum``),
  never a silently ignored tool.
- ``tool_choice`` ``required`` or a named function is forced during sampling by a
  grammar (:meth:`ToolSet.grammar`) whose every sentence is one call
  ``{"name": ..., "arguments": {...}}`` of a declared function, with arguments
  that validate against its ``parameters`` schema. A schema the grammar cannot
  enforce is refused at submit (fail closed).
- The model sees the functions through its own chat template when the template
  takes ``tools`` (``PromptRenderer.supports_tools``); otherwise through the
  generic format (:func:`system_block`): a system-prompt block listing the
  functions as JSON and asking for exactly that JSON object. ``none`` puts no
  function in the prompt.
- The answer is one piece of text (streamed as tokens like any answer); a tool
  call is read from it at the end (:func:`parse_calls`), the same way wherever it
  is read (the OpenAI response, ``GET /v1/jobs/{id}``, the stored conversation),
  and its call ids are derived from the job id, so all of them agree.

The tool set travels on the job record as plain JSON (:meth:`ToolSet.to_json`).
"""

from __future__ import annotations

import hashlib
import json
import re
from dataclasses import dataclass
from functools import cached_property
from typing import Any

from shared.errors import InvalidRequest, InvalidTools, UnsupportedParameter
from shared.json_grammar import UnsupportedSchema, inline_refs, schema_grammar

_NAME = re.compile(r"^[A-Za-z0-9_-]{1,64}$")
_CHOICES = ("auto", "none", "required")
_MAX_TOOLS = 128
_EMPTY_PARAMS: dict[str, Any] = {"type": "object", "properties": {}}


@dataclass(frozen=True)
class ToolSet:
    """The request's functions (``name``, ``description``, ``parameters``) and its
    choice: ``auto``, ``none``, ``required`` or a function's name (``named``)."""

    functions: list[dict[str, Any]]
    choice: str = "auto"
    named: str | None = None
    parallel: bool = True  # parallel_tool_calls: false reads at most one call

    @property
    def forced(self) -> bool:
        """Sampling must produce a call (``required`` or a named function)."""
        return self.choice == "required" or self.named is not None

    @property
    def offered(self) -> list[dict[str, Any]]:
        """The functions the prompt shows (none with ``tool_choice: none``)."""
        return [] if self.choice == "none" else self.functions

    def names(self) -> list[str]:
        return [f["name"] for f in self.functions]

    def to_json(self) -> dict[str, Any]:
        return {"functions": self.functions, "choice": self.choice, "named": self.named,
                "parallel": self.parallel}

    @classmethod
    def from_json(cls, raw: dict[str, Any] | None) -> ToolSet | None:
        if not raw:
            return None
        return cls(functions=list(raw["functions"]), choice=str(raw.get("choice", "auto")),
                   named=raw.get("named"), parallel=bool(raw.get("parallel", True)))

    def grammar(self) -> str | None:
        """The GBNF grammar that forces one call (None unless forced); built once."""
        return self._grammar

    @cached_property
    def _grammar(self) -> str | None:
        if not self.forced:
            return None
        chosen = [f for f in self.functions if self.named in (None, f["name"])]
        return call_grammar(chosen)

    def openai_tools(self) -> list[dict[str, Any]]:
        """The offered functions in OpenAI's ``tools`` shape (what chat templates read)."""
        return [{"type": "function", "function": f} for f in self.offered]


def call_schema(functions: list[dict[str, Any]]) -> dict[str, Any]:
    """The JSON schema of one call of one of ``functions``."""
    calls = [{"type": "object",
              "properties": {"name": {"const": f["name"]},
                             "arguments": f.get("parameters") or _EMPTY_PARAMS},
              "required": ["name", "arguments"], "additionalProperties": False}
             for f in functions]
    return calls[0] if len(calls) == 1 else {"anyOf": calls}


def call_grammar(functions: list[dict[str, Any]]) -> str:
    return schema_grammar(call_schema(functions), "tools", prop_order=["name", "arguments"])


# --- checking the request ---------------------------------------------------------


def _bad(param: str, message: str) -> InvalidRequest:
    return InvalidTools.of_field(param, message)


def _function(tool: Any, i: int) -> dict[str, Any]:
    at = f"tools[{i}]"
    if not isinstance(tool, dict) or tool.get("type") != "function":
        raise _bad(f"{at}.type", "each tool must be {\"type\": \"function\", \"function\": "
                                 "{...}} (chatq supports function tools only)")
    fn = tool.get("function")
    if not isinstance(fn, dict):
        raise _bad(f"{at}.function", "a function object is required")
    unknown = set(fn) - {"name", "description", "parameters", "strict"}
    if unknown:
        raise _bad(f"{at}.function.{sorted(unknown)[0]}", "unknown field")
    name = fn.get("name")
    if not isinstance(name, str) or not _NAME.match(name):
        raise _bad(f"{at}.function.name", "must be 1-64 letters, digits, _ or -")
    if not isinstance(fn.get("description", ""), str):
        raise _bad(f"{at}.function.description", "must be a string")
    params = fn.get("parameters", _EMPTY_PARAMS)
    if not isinstance(params, dict) or params.get("type", "object") != "object":
        raise _bad(f"{at}.function.parameters", "must be a JSON Schema of type object")
    where = f"{at}.function.parameters"
    try:
        params = inline_refs(params, where)
        schema_grammar(params, where)  # refuse now what could never be forced
    except UnsupportedSchema as exc:
        raise UnsupportedParameter.of_fields([(exc.path, exc.message)]) from exc
    out = {"name": name, "parameters": params}
    if fn.get("description"):
        out["description"] = fn["description"]
    return out


def _choice(raw: Any, names: list[str]) -> tuple[str, str | None]:
    if raw is None:
        return "auto", None
    if isinstance(raw, str):
        if raw not in _CHOICES:
            raise _bad("tool_choice", f"must be one of {', '.join(_CHOICES)} or "
                                      "{\"type\": \"function\", \"function\": {\"name\": ...}}")
        return raw, None
    fn = raw.get("function") if isinstance(raw, dict) else None
    name = fn.get("name") if isinstance(fn, dict) else None
    if not isinstance(raw, dict) or raw.get("type") != "function" or not isinstance(name, str):
        raise _bad("tool_choice", "a named choice is {\"type\": \"function\", \"function\": "
                                  "{\"name\": ...}}")
    if name not in names:
        raise _bad("tool_choice.function.name",
                   f"no tool named {name!r} (tools: {', '.join(names) or 'none'})")
    return "required", name


def toolset_of(tools: list[Any] | None, tool_choice: Any,
               parallel_tool_calls: bool | None = None) -> ToolSet | None:
    """The request's checked tool set (None: no tools). Raises a 400 naming the param."""
    if not tools:
        if tool_choice not in (None, "none", "auto"):
            raise _bad("tool_choice", "needs tools")
        return None
    if len(tools) > _MAX_TOOLS:
        raise _bad("tools", f"at most {_MAX_TOOLS} tools")
    functions = [_function(t, i) for i, t in enumerate(tools)]
    names = [f["name"] for f in functions]
    dupes = sorted({n for n in names if names.count(n) > 1})
    if dupes:
        raise _bad("tools", f"function names must be unique ({', '.join(dupes)} repeats)")
    choice, named = _choice(tool_choice, names)
    toolset = ToolSet(functions=functions, choice=choice, named=named,
                      parallel=parallel_tool_calls is not False)
    if toolset.forced:
        try:
            toolset.grammar()
        except UnsupportedSchema as exc:
            raise UnsupportedParameter.of_fields([(exc.path, exc.message)]) from exc
    return toolset


def _check_call(call: Any, at: str) -> None:
    fn = call.get("function") if isinstance(call, dict) else None
    if not isinstance(fn, dict) or not isinstance(fn.get("name"), str):
        raise _bad(f"{at}.function.name", "each tool call needs function.name")
    if not isinstance(call.get("id"), str) or not call["id"]:
        raise _bad(f"{at}.id", "each tool call needs its id")
    args = fn.get("arguments", "{}")
    try:
        parsed = json.loads(args) if isinstance(args, str) else args
    except ValueError:
        raise _bad(f"{at}.function.arguments", "must be a JSON object (as a string)") from None
    if not isinstance(parsed, dict):
        raise _bad(f"{at}.function.arguments", "must be a JSON object (as a string)")


def check_messages(messages: list[dict[str, Any]]) -> None:
    """Tool messages name the call they answer; assistant tool calls are well formed;
    only assistant messages carry tool calls."""
    for i, m in enumerate(messages):
        role = m.get("role")
        if role == "tool" and not m.get("tool_call_id"):
            raise _bad(f"messages[{i}].tool_call_id", "a tool message needs tool_call_id")
        if role != "tool" and m.get("tool_call_id") is not None:
            raise _bad(f"messages[{i}].tool_call_id", "only tool messages have one")
        calls = m.get("tool_calls")
        if calls is None:
            continue
        if role != "assistant":
            raise _bad(f"messages[{i}].tool_calls", "only assistant messages have tool calls")
        if not isinstance(calls, list):
            raise _bad(f"messages[{i}].tool_calls", "must be a list")
        for j, call in enumerate(calls):
            _check_call(call, f"messages[{i}].tool_calls[{j}]")


# --- the prompt -----------------------------------------------------------------------


def system_block(toolset: ToolSet) -> str:
    """The generic format: what a model whose template knows no tools is told."""
    listing = json.dumps(toolset.offered, ensure_ascii=False, indent=1)
    shape = '{"name": <function name>, "arguments": {<argument name>: <value>, ...}}'
    if toolset.named:
        ask = (f"Call the function {toolset.named!r} now: answer with only a JSON object "
               f"{shape}.")
    elif toolset.choice == "required":
        ask = f"Call one of these functions now: answer with only a JSON object {shape}."
    else:
        ask = (f"To call a function, answer with only a JSON object {shape}. "
               "If no function is needed, answer normally.")
    return f"You can call these functions:\n{listing}\n{ask}"


def _args_object(raw: Any) -> Any:
    if isinstance(raw, str):
        try:
            return json.loads(raw)
        except ValueError:
            return raw
    return raw


def _call_text(call: dict[str, Any]) -> str:
    fn = call["function"]
    return json.dumps({"name": fn["name"], "arguments": _args_object(fn.get("arguments"))},
                      ensure_ascii=False)


def _plain(m: dict[str, Any], names: dict[str, str]) -> dict[str, str]:
    """One message in the generic format (plain system/user/assistant text)."""
    content = str(m.get("content") or "")
    if m["role"] == "tool":
        name = names.get(str(m.get("tool_call_id")), "the function")
        return {"role": "user",
                "content": f"Result of {name} (call {m.get('tool_call_id')}):\n{content}"}
    calls = m.get("tool_calls") or []
    if calls:
        content = "\n".join([content, *(_call_text(c) for c in calls)]).strip()
    return {"role": m["role"], "content": content}


def plain_messages(messages: list[dict[str, Any]]) -> list[dict[str, str]]:
    """Tool calls and tool results as text (consecutive tool results as one user turn,
    so templates that insist on alternating roles accept them)."""
    names = {str(c.get("id")): c["function"]["name"]
             for m in messages for c in m.get("tool_calls") or []}
    out: list[dict[str, str]] = []
    for m in messages:
        plain = _plain(m, names)
        if m["role"] == "tool" and out and out[-1].get("tool_result") == "1":
            out[-1] = {**out[-1], "content": f"{out[-1]['content']}\n\n{plain['content']}"}
            continue
        out.append({**plain, "tool_result": "1"} if m["role"] == "tool" else plain)
    return [{"role": m["role"], "content": m["content"]} for m in out]


def native_messages(messages: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Messages for a template that takes tools: content always a string, call
    arguments as objects (as Hugging Face templates expect)."""
    out: list[dict[str, Any]] = []
    for m in messages:
        msg: dict[str, Any] = {**m, "content": str(m.get("content") or "")}
        if m.get("tool_calls"):
            msg["tool_calls"] = [
                {**c, "function": {**c["function"],
                                   "arguments": _args_object(c["function"].get("arguments"))}}
                for c in m["tool_calls"]]
        out.append(msg)
    return out


def with_block(messages: list[dict[str, str]], block: str) -> list[dict[str, str]]:
    """The generic block appended to the first system message (or as one)."""
    if messages and messages[0]["role"] == "system":
        first = {"role": "system", "content": f"{messages[0]['content']}\n\n{block}"}
        return [first, *messages[1:]]
    return [{"role": "system", "content": block}, *messages]


def prompt_messages(messages: list[dict[str, Any]], toolset: ToolSet | None,
                    native: bool) -> list[dict[str, Any]]:
    """The messages as the chat template gets them (see the module's docstring)."""
    if native:
        return native_messages(messages)
    plain = plain_messages(messages)
    if toolset is not None and toolset.offered:
        return with_block(plain, system_block(toolset))
    return plain


# --- reading the answer ------------------------------------------------------------------


def call_id(job_id: str, index: int) -> str:
    """A tool call's id: derived from the job, so every reader of the job agrees."""
    digest = hashlib.sha256(f"{job_id}:{index}".encode()).hexdigest()
    return f"call_{digest[:24]}"


def _objects(text: str) -> list[Any]:
    """The JSON values in ``text`` that start at a ``{``, in order (fences and a
    template's own wrapper such as ``<tool_call>`` around them are skipped)."""
    decoder = json.JSONDecoder()
    found = []
    i = text.find("{")
    while i != -1:
        try:
            value, end = decoder.raw_decode(text, i)
        except ValueError:
            i = text.find("{", i + 1)
            continue
        found.append(value)
        i = text.find("{", end)
    return found


def _as_call(value: Any, names: list[str]) -> tuple[str, dict[str, Any]] | None:
    if not isinstance(value, dict) or value.get("name") not in names:
        return None
    args = value.get("arguments", value.get("parameters", {}))
    args = _args_object(args)
    return (value["name"], args) if isinstance(args, dict) else None


def parse_calls(output: str, toolset: ToolSet | None, job_id: str) -> list[dict[str, Any]]:
    """The OpenAI ``tool_calls`` in a finished answer (empty: it is plain content).

    With a forced choice the answer is the grammar's one call; with ``auto`` it
    is a call when the answer is nothing but JSON objects each calling a
    declared function (a function's output format, with ``parameters`` for
    ``arguments``, or wrapped in the template's tags, is read as well).
    """
    if toolset is None or toolset.choice == "none":
        return []
    stripped = _unwrap(output)
    values = _objects(stripped)
    calls = [_as_call(v, toolset.names()) for v in values]
    if not calls or any(c is None for c in calls):
        return []
    if not toolset.forced and not _only_json(stripped):
        return []
    found = [c for c in calls if c is not None][:None if toolset.parallel else 1]
    return [{"id": call_id(job_id, i), "type": "function",
             "function": {"name": name, "arguments": json.dumps(args, ensure_ascii=False)}}
            for i, (name, args) in enumerate(found)]


_WRAPPERS = re.compile(r"```(?:json)?|</?tool_call>|<\|python_tag\|>|\[TOOL_CALLS\]")


def _unwrap(output: str) -> str:
    return _WRAPPERS.sub("", output).strip()


def _only_json(text: str) -> bool:
    """Nothing but whitespace, commas and brackets outside the JSON objects."""
    depth, in_string, escaped, outside = 0, False, False, []
    for ch in text:
        if in_string:
            in_string = escaped or ch != '"'
            escaped = not escaped and ch == "\\"
        elif ch == '"':
            in_string = True
        elif ch == "{":
            depth += 1
        elif ch == "}":
            depth -= 1
        elif depth == 0:
            outside.append(ch)
    return not "".join(outside).strip(" \n\t,[]")


def could_be_call(prefix: str) -> bool:
    """Whether an ``auto`` answer that begins with ``prefix`` may still turn out to be
    a call (a stream holds its text back until it knows)."""
    head = prefix.lstrip()
    if not head:
        return True
    return any(head.startswith(w) or w.startswith(head)
               for w in ("{", "[", "```", "<tool_call>", "<|python_tag|>", "[TOOL_CALLS]"))
