"""Admission of response_format: the grammar in the job's sampling parameters, an
unenforceable schema refused naming the keyword, and no stop string that could cut
the JSON."""

from __future__ import annotations

import pytest

from api.jobs import sampling, tool_params
from shared.errors import UnsupportedParameter
from shared.registry import ModelSpec
from shared.schemas import JobRequest
from shared.tools import toolset_of


def local_model(stop: list[str] | None = None) -> ModelSpec:
    return ModelSpec.model_validate({"name": "m", "queue": "cpu", "path": "/models/m.gguf",
                                     "defaults": {"stop": stop or []}})


def job(**fields: object) -> JobRequest:
    return JobRequest.model_validate({"messages": [{"role": "user", "content": "Hi"}],
                                      **fields})


SCHEMA = {"type": "json_schema", "json_schema": {"name": "p", "schema": {
    "type": "object", "properties": {"a": {"type": "integer"}}, "required": ["a"]}}}


def test_response_format_becomes_the_grammar_and_model_stops_step_aside() -> None:
    params = sampling(local_model(stop=["\nUser:"]), job(response_format=SCHEMA))
    assert params.grammar is not None and "root ::=" in params.grammar
    assert params.stop == []
    assert sampling(local_model(stop=["\nUser:"]), job()).stop == ["\nUser:"]
    assert sampling(local_model(), job(response_format={"type": "text"})).grammar is None


def test_a_stop_with_response_format_is_refused() -> None:
    with pytest.raises(UnsupportedParameter) as refused:
        sampling(local_model(), job(response_format={"type": "json_object"}, stop="}"))
    assert refused.value.details[0]["field"] == "stop"


def test_an_unenforceable_schema_is_refused_naming_the_keyword() -> None:
    bad = {"type": "json_schema", "json_schema": {"name": "p", "schema": {
        "type": "object", "properties": {"a": {"type": "integer", "maximum": 9}}}}}
    with pytest.raises(UnsupportedParameter) as refused:
        sampling(local_model(), job(response_format=bad))
    assert refused.value.details[0]["field"] == \
        "response_format.json_schema.schema.properties.a.maximum"


def test_a_forced_tool_call_with_response_format_is_refused_naming_it() -> None:
    tools = [{"type": "function", "function": {"name": "f", "parameters": {
        "type": "object", "properties": {"x": {"type": "integer"}}}}}]
    req = job(response_format={"type": "json_object"}, tools=tools, tool_choice="required")
    toolset = toolset_of(req.tools, req.tool_choice)
    with pytest.raises(UnsupportedParameter) as refused:
        tool_params(local_model(), req, sampling(local_model(), req), toolset)
    assert refused.value.details[0]["field"] == "response_format"
    auto = job(response_format={"type": "json_object"}, tools=tools)
    params = tool_params(local_model(), auto, sampling(local_model(), auto),
                         toolset_of(auto.tools, auto.tool_choice))
    assert params.grammar is not None and "root   ::= object" in params.grammar
