"""A Responses API request as chatq work (api/responses.py): input items as chat
messages, tools and text.format in chat's shape, refusals, errors renamed."""

from __future__ import annotations

from typing import Any

import pytest

from api import responses as mapping
from shared.errors import InvalidRequest, UnsupportedParameter


def req(**fields: Any) -> mapping.ResponseRequest:
    return mapping.ResponseRequest.model_validate({"model": "m", "input": "Hi", **fields})


def test_a_string_input_with_instructions() -> None:
    messages = mapping.input_messages(req(instructions="Be brief."))
    assert [(m.role, m.content) for m in messages] == [("system", "Be brief."), ("user", "Hi")]


def test_items_become_chat_messages() -> None:
    body = req(input=[
        {"role": "developer", "content": "Use tools."},
        {"type": "message", "role": "user",
         "content": [{"type": "input_text", "text": "Weather "},
                     {"type": "input_text", "text": "in Paris?"}]},
        {"type": "function_call", "call_id": "c1", "name": "w", "arguments": "{}"},
        {"type": "function_call", "call_id": "c2", "name": "w", "arguments": "{}"},
        {"type": "function_call_output", "call_id": "c1", "output": "sunny"},
    ])
    messages = mapping.input_messages(body)
    assert [m.role for m in messages] == ["system", "user", "assistant", "tool"]
    assert messages[1].content == "Weather in Paris?"
    calls = messages[2].tool_calls or []
    assert [c["id"] for c in calls] == ["c1", "c2"]  # one assistant turn
    assert calls[0]["function"] == {"name": "w", "arguments": "{}"}
    assert messages[3].tool_call_id == "c1" and messages[3].content == "sunny"


@pytest.mark.parametrize(("item", "param"), [
    ({"role": "user", "content": [{"type": "input_file", "file_id": "f"}]},
     "input[0].content[0].type"),
    ({"type": "reasoning", "summary": []}, "input[0].type"),
    ({"type": "item_reference", "id": "msg_1"}, "input[0].type"),
])
def test_unsupported_items_are_named(item: dict[str, Any], param: str) -> None:
    with pytest.raises(UnsupportedParameter) as err:
        mapping.input_messages(req(input=[item]))
    assert err.value.details[0]["field"] == param


def test_a_bad_item_is_named() -> None:
    with pytest.raises(InvalidRequest) as err:
        mapping.input_messages(req(input=[{"type": "function_call", "name": "w"}]))
    assert err.value.details[0]["field"] == "input[0].call_id"


def test_tools_and_choice_in_chat_shape() -> None:
    tools = [{"type": "function", "name": "w", "parameters": {"type": "object"},
              "strict": True}]
    assert mapping.chat_tools(tools) == [{"type": "function", "function": {
        "name": "w", "parameters": {"type": "object"}, "strict": True}}]
    assert mapping.chat_tool_choice({"type": "function", "name": "w"}) == {
        "type": "function", "function": {"name": "w"}}
    assert mapping.chat_tool_choice("required") == "required"


def test_text_format_as_response_format() -> None:
    fmt = mapping.response_format(mapping.TextConfig(format={
        "type": "json_schema", "name": "x", "schema": {"type": "object"}, "strict": True}))
    assert fmt is not None and fmt.type == "json_schema" and fmt.json_schema is not None
    assert fmt.json_schema.schema_ == {"type": "object"}
    obj = mapping.response_format(mapping.TextConfig(format={"type": "json_object"}))
    assert obj is not None and obj.type == "json_object"
    with pytest.raises(InvalidRequest) as err:
        mapping.response_format(mapping.TextConfig(format={"type": "yaml"}))
    assert err.value.details[0]["field"] == "text.format"


@pytest.mark.parametrize(("fields", "param"), [
    ({"tools": [{"type": "file_search", "vector_store_ids": ["v"]}]}, "tools[0].type"),
    ({"tool_choice": {"type": "web_search_preview"}}, "tool_choice.type"),
    ({"reasoning": {"effort": "low"}}, "reasoning"),
    ({"include": ["message.output_text.logprobs"]}, "include"),
    ({"background": True, "store": False}, "store"),
    ({"previous_response_id": "resp_1", "conversation": "conv_1"}, "conversation"),
    ({"previous_response_id": "resp_1", "truncation": "disabled"}, "truncation"),
    ({"service_tier": "flex"}, "service_tier"),
    ({"store": False, "webhook": "https://example.com/hook"}, "webhook"),
    ({"stream_options": {"include_obfuscation": True}, "stream": True}, "stream_options"),
])
def test_refusals_name_the_parameter(fields: dict[str, Any], param: str) -> None:
    assert param in [p for p, _ in req(**fields).refusals()]


def test_neutral_values_are_not_refused() -> None:
    body = req(include=[], service_tier="auto", truncation="disabled", top_logprobs=0,
               stream=True, stream_options={"include_obfuscation": False})
    assert body.refusals() == []


def test_an_unknown_field_is_refused() -> None:
    with pytest.raises(ValueError, match="extra"):
        req(frobnicate=True)


def test_errors_name_the_responses_fields() -> None:
    exc = UnsupportedParameter.of_fields([
        ("response_format.json_schema.schema.patternProperties", "not supported"),
        ("tools[1].function.parameters", "bad")])
    renamed = mapping.renamed(exc)
    assert [d["field"] for d in renamed.details] == [
        "text.format.schema.patternProperties", "tools[1].parameters"]
    assert "response_format" not in renamed.message
    overflow = mapping.renamed(InvalidRequest("your messages resulted in 9 tokens; max_tokens"))
    assert overflow.message == "your input resulted in 9 tokens; max_output_tokens"
