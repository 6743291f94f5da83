"""Tools: checking the request, the forcing grammar, the prompt formats, reading calls."""

from __future__ import annotations

import json
from typing import Any

import llama_cpp
import pytest
from llama_cpp import Llama

from shared.errors import InvalidRequest, UnsupportedParameter
from shared.prompting import PromptRenderer, takes_tools
from shared.registry import Registry
from shared.settings import DEFAULT_REGISTRY
from shared.tools import (
    ToolSet,
    call_id,
    call_schema,
    check_messages,
    could_be_call,
    parse_calls,
    plain_messages,
    prompt_messages,
    system_block,
    toolset_of,
)

PARAMS: dict[str, Any] = {"type": "object", "properties": {"city": {"type": "string"}},
                          "required": ["city"]}


def fn(name: str, params: dict[str, Any] | None = None) -> dict[str, Any]:
    function: dict[str, Any] = {"name": name, "description": f"does {name}"}
    if params is not None:
        function["parameters"] = params
    return {"type": "function", "function": function}


TOOLS = [fn("get_weather", PARAMS), fn("ping")]


def param_of(exc: pytest.ExceptionInfo[Exception]) -> str:
    assert isinstance(exc.value, InvalidRequest | UnsupportedParameter)
    assert exc.value.status == 400
    return str(exc.value.details[0]["field"])


# --- the request ------------------------------------------------------------------------


def test_toolset_defaults_to_auto_and_keeps_the_functions() -> None:
    toolset = toolset_of(TOOLS, None)
    assert toolset is not None and toolset.choice == "auto" and not toolset.forced
    assert toolset.names() == ["get_weather", "ping"]
    assert toolset.functions[1]["parameters"] == {"type": "object", "properties": {}}
    assert ToolSet.from_json(toolset.to_json()) == toolset
    assert toolset_of(None, None) is None and toolset_of([], "none") is None


def test_named_choice_forces_that_function() -> None:
    toolset = toolset_of(TOOLS, {"type": "function", "function": {"name": "ping"}})
    assert toolset is not None and toolset.forced and toolset.named == "ping"
    assert toolset.choice == "required"


@pytest.mark.parametrize(("tools", "choice", "param"), [
    ([{"type": "function"}], None, "tools[0].function"),
    ([{"type": "code_interpreter"}], None, "tools[0].type"),
    ([fn("bad name!")], None, "tools[0].function.name"),
    ([{"type": "function", "function": {"name": "f", "extra": 1}}], None,
     "tools[0].function.extra"),
    ([fn("f", {"type": "array"})], None, "tools[0].function.parameters"),
    ([fn("f"), fn("f")], None, "tools"),
    (TOOLS, "always", "tool_choice"),
    (TOOLS, {"type": "function", "function": {"name": "nope"}}, "tool_choice.function.name"),
    (TOOLS, {"type": "function"}, "tool_choice"),
    (None, "required", "tool_choice"),
    ([fn("f", {"type": "object", "properties": {"n": {"type": "number", "minimum": 0.5}}})],
     None, "tools[0].function.parameters.properties.n.minimum"),
])
def test_bad_tools_name_the_param(tools: Any, choice: Any, param: str) -> None:
    with pytest.raises((InvalidRequest, UnsupportedParameter)) as caught:
        toolset_of(tools, choice)
    assert param_of(caught) == param


@pytest.mark.parametrize(("messages", "param"), [
    ([{"role": "tool", "content": "x"}], "messages[0].tool_call_id"),
    ([{"role": "user", "content": "x", "tool_call_id": "c"}], "messages[0].tool_call_id"),
    ([{"role": "user", "content": "x", "tool_calls": []}], "messages[0].tool_calls"),
    ([{"role": "assistant", "tool_calls": [{"id": "c", "function": {}}]}],
     "messages[0].tool_calls[0].function.name"),
    ([{"role": "assistant", "tool_calls": [{"function": {"name": "f"}}]}],
     "messages[0].tool_calls[0].id"),
    ([{"role": "assistant", "tool_calls": [{"id": "c", "function": {
        "name": "f", "arguments": "[1]"}}]}], "messages[0].tool_calls[0].function.arguments"),
])
def test_bad_tool_messages_name_the_param(messages: list[dict[str, Any]], param: str) -> None:
    with pytest.raises(InvalidRequest) as caught:
        check_messages(messages)
    assert param_of(caught) == param


def test_good_tool_messages_pass() -> None:
    check_messages([
        {"role": "user", "content": "hi"},
        {"role": "assistant", "content": "", "tool_calls": [
            {"id": "call_1", "type": "function",
             "function": {"name": "f", "arguments": '{"a": 1}'}}]},
        {"role": "tool", "tool_call_id": "call_1", "content": "ok"},
    ])


# --- schemas and grammars -------------------------------------------------------------------


def test_call_schema_is_one_call_of_the_chosen_functions() -> None:
    toolset = toolset_of(TOOLS, "required")
    assert toolset is not None
    schema = call_schema(toolset.functions)
    assert [c["properties"]["name"] for c in schema["anyOf"]] == [
        {"const": "get_weather"}, {"const": "ping"}]
    grammar = toolset.grammar()
    assert grammar is not None and grammar.count("root ::=") == 1
    assert '"\\"get_weather\\""' in grammar and '"\\"ping\\""' in grammar
    named = toolset_of(TOOLS, {"type": "function", "function": {"name": "ping"}})
    assert named is not None and "get_weather" not in (named.grammar() or "")
    assert (toolset_of(TOOLS, "auto") or toolset).grammar() is None


@pytest.fixture(scope="module")
def vocab_llm() -> Llama:
    registry = Registry.load(DEFAULT_REGISTRY)
    path = registry.gguf_path(registry.models[registry.default_name])
    return Llama(model_path=str(path), vocab_only=True, verbose=False)


def test_llama_cpp_accepts_the_forcing_grammar(vocab_llm: Llama) -> None:
    toolset = toolset_of([*TOOLS, fn("nested", {"type": "object", "properties": {
        "tags": {"type": "array", "items": {"type": "string", "maxLength": 8}, "maxItems": 3},
        "when": {"type": "string", "format": "date"},
        "mode": {"anyOf": [{"type": "integer"}, {"type": "null"}]}}})], "required")
    assert toolset is not None
    grammar = toolset.grammar() or ""
    vocab = llama_cpp.llama_model_get_vocab(vocab_llm.model)
    sampler = llama_cpp.llama_sampler_init_grammar(vocab, grammar.encode(), b"root")
    assert sampler
    llama_cpp.llama_sampler_free(sampler)


# --- the prompt ------------------------------------------------------------------------------


HISTORY: list[dict[str, Any]] = [
    {"role": "system", "content": "Be brief."},
    {"role": "user", "content": "Weather in Paris and Rome?"},
    {"role": "assistant", "content": "", "tool_calls": [
        {"id": "call_a", "type": "function",
         "function": {"name": "get_weather", "arguments": '{"city": "Paris"}'}},
        {"id": "call_b", "type": "function",
         "function": {"name": "get_weather", "arguments": '{"city": "Rome"}'}}]},
    {"role": "tool", "tool_call_id": "call_a", "content": "21 C"},
    {"role": "tool", "tool_call_id": "call_b", "content": "25 C"},
]


def test_plain_messages_write_calls_and_results_as_text() -> None:
    plain = plain_messages(HISTORY)
    assert [m["role"] for m in plain] == ["system", "user", "assistant", "user"]
    assert [json.loads(line) for line in plain[2]["content"].splitlines()] == [
        {"name": "get_weather", "arguments": {"city": "Paris"}},
        {"name": "get_weather", "arguments": {"city": "Rome"}}]
    assert "get_weather (call call_a):\n21 C" in plain[3]["content"]
    assert "(call call_b):\n25 C" in plain[3]["content"]


def test_generic_block_joins_the_system_message_unless_none() -> None:
    auto = toolset_of(TOOLS, "auto")
    shown = prompt_messages(HISTORY, auto, native=False)
    assert shown[0]["content"].startswith("Be brief.\n\nYou can call these functions:")
    assert '"name": "get_weather"' in shown[0]["content"]
    assert prompt_messages(HISTORY, toolset_of(TOOLS, "none"), native=False)[0] == {
        "role": "system", "content": "Be brief."}
    only_user = prompt_messages([{"role": "user", "content": "hi"}], auto, native=False)
    assert only_user[0]["role"] == "system" and only_user[1]["content"] == "hi"


def test_system_block_says_what_is_forced() -> None:
    named = toolset_of(TOOLS, {"type": "function", "function": {"name": "ping"}})
    assert named is not None and "Call the function 'ping' now" in system_block(named)
    auto = toolset_of(TOOLS, "auto")
    assert auto is not None and "answer normally" in system_block(auto)


def test_native_messages_keep_tool_roles_with_argument_objects() -> None:
    shown = prompt_messages(HISTORY, toolset_of(TOOLS, "auto"), native=True)
    assert [m["role"] for m in shown] == ["system", "user", "assistant", "tool", "tool"]
    assert shown[2]["tool_calls"][0]["function"]["arguments"] == {"city": "Paris"}


def test_templates_that_take_tools_are_told_apart() -> None:
    assert takes_tools("{% if tools %}{{ tools | tojson }}{% endif %}{{ messages }}")
    assert not takes_tools("{% for m in messages %}{{ m['content'] }}{% endfor %}")


def test_renderer_shows_the_functions_through_a_template_that_takes_them(
        vocab_llm: Llama) -> None:
    template = ("{% if tools %}TOOLS:{% for t in tools %}{{ t.function.name }};{% endfor %}"
                "{% endif %}{% for m in messages %}[{{ m.role }}]{{ m.content }}{% endfor %}")
    renderer = PromptRenderer(vocab_llm, template).for_tools(toolset_of(TOOLS, "auto"))
    assert renderer.supports_tools
    text = vocab_llm.detokenize(renderer.render(HISTORY[:2]).tokens).decode()
    assert "TOOLS:get_weather;ping;" in text and "You can call" not in text
    generic = PromptRenderer(vocab_llm).for_tools(toolset_of(TOOLS, "auto"))
    assert not generic.supports_tools
    assert "You can call these functions" in vocab_llm.detokenize(
        generic.render(HISTORY[:2]).tokens).decode()


# --- reading the answer -------------------------------------------------------------------------


def test_a_call_is_read_with_a_stable_id() -> None:
    toolset = toolset_of(TOOLS, "auto")
    calls = parse_calls('{"name": "get_weather", "arguments": {"city": "Paris"}}', toolset, "j1")
    assert calls == [{"id": call_id("j1", 0), "type": "function",
                      "function": {"name": "get_weather", "arguments": '{"city": "Paris"}'}}]
    assert call_id("j1", 0) == call_id("j1", 0) != call_id("j1", 1) != call_id("j2", 1)
    assert call_id("j1", 0).startswith("call_")


@pytest.mark.parametrize("output", [
    '```json\n{"name": "ping", "arguments": {}}\n```',
    '<tool_call>\n{"name": "ping", "arguments": {}}\n</tool_call>',
    '{"name": "ping", "parameters": {}}',
    '{"name": "ping", "arguments": "{}"}',
])
def test_common_call_formats_are_read(output: str) -> None:
    calls = parse_calls(output, toolset_of(TOOLS, "auto"), "j")
    assert [c["function"]["name"] for c in calls] == ["ping"]
    assert calls[0]["function"]["arguments"] == "{}"


def test_two_calls_are_read_in_order() -> None:
    output = ('{"name": "ping", "arguments": {}}\n'
              '{"name": "get_weather", "arguments": {"city": "x"}}')
    calls = parse_calls(output, toolset_of(TOOLS, "auto"), "j")
    assert [c["function"]["name"] for c in calls] == ["ping", "get_weather"]
    assert [c["id"] for c in calls] == [call_id("j", 0), call_id("j", 1)]


@pytest.mark.parametrize("output", [
    "The weather is sunny.",
    'Sure! {"name": "ping", "arguments": {}}',  # prose around it: auto reads content
    '{"name": "unknown", "arguments": {}}',
    '{"name": "ping", "arguments": [1]}',
    '{"name": "ping", "arguments": {"a": ',  # cut short
    '{"city": "Paris"}',
])
def test_anything_else_is_content(output: str) -> None:
    assert parse_calls(output, toolset_of(TOOLS, "auto"), "j") == []


def test_parallel_tool_calls_false_reads_one_call() -> None:
    output = '{"name": "ping", "arguments": {}}\n{"name": "ping", "arguments": {}}'
    toolset = toolset_of(TOOLS, "auto", parallel_tool_calls=False)
    assert toolset is not None and ToolSet.from_json(toolset.to_json()) == toolset
    assert len(parse_calls(output, toolset, "j")) == 1
    assert len(parse_calls(output, toolset_of(TOOLS, "auto", True), "j")) == 2


def test_no_calls_without_tools_or_with_none() -> None:
    call = '{"name": "ping", "arguments": {}}'
    assert parse_calls(call, None, "j") == []
    assert parse_calls(call, toolset_of(TOOLS, "none"), "j") == []


def test_could_be_call_holds_only_json_like_beginnings() -> None:
    assert could_be_call("") and could_be_call("  ") and could_be_call(' {"na')
    assert could_be_call("``") and could_be_call("<tool_") and could_be_call("[")
    assert not could_be_call("The") and not could_be_call(" Hello {")
