"""The sampling parameters admission resolves for a request (:mod:`api.grammars`, then
:meth:`shared.registry.ModelSpec.resolve_sampling`, once).

response_format: the grammar in the job's sampling parameters, an unenforceable
schema refused naming the keyword, and no stop string that could cut the JSON.

A model served by an upstream: a parameter it cannot honour is refused with 400
naming it (never dropped), no tokens are counted (its server checks the context),
and a job its upstream failed maps to 502 (or 400 when the upstream refused the
request) on the blocking paths."""

from __future__ import annotations

import pytest

from api.grammars import build_now
from shared.errors import JobFailed, UnsupportedParameter
from shared.registry import ModelSpec
from shared.schemas import JobRequest, SamplingParams


def sampling(spec: ModelSpec, req: JobRequest) -> SamplingParams:
    """What admission resolves for ``req`` on ``spec``."""
    built = build_now(req.response_format, req.tools, req.tool_choice, req.parallel_tool_calls)
    return spec.resolve_sampling(req.sampling_fields(), grammar=built.response_format,
                                 tool_grammar=built.tool_call)


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
        "type": "object", "properties": {"a": {"type": "number", "maximum": 9.5}}}}}
    with pytest.raises(UnsupportedParameter) as refused:
        sampling(local_model(), job(response_format=bad))
    assert refused.value.details[0]["field"] == \
        "response_format.json_schema.schema.properties.a.maximum"


def test_a_forced_tool_call_with_response_format_is_refused_naming_it() -> None:
    tools = [{"type": "function", "function": {"name": "f", "parameters": {
        "type": "object", "properties": {"x": {"type": "integer"}}}}}]
    req = job(response_format={"type": "json_object"}, tools=tools, tool_choice="required")
    with pytest.raises(UnsupportedParameter) as refused:
        sampling(local_model(), req)
    assert refused.value.details[0]["field"] == "response_format"
    auto = job(response_format={"type": "json_object"}, tools=tools)
    params = sampling(local_model(), auto)
    assert params.grammar is not None and "root   ::= object" in params.grammar


PERSON = {"type": "object", "properties": {"name": {"type": "string"},
                                          "age": {"type": "integer", "minimum": 0,
                                                  "maximum": 150}},
          "required": ["name", "age"]}


@pytest.mark.parametrize("choice", ["required", {"type": "function",
                                                 "function": {"name": "Person"}}])
def test_a_forced_call_takes_a_response_format_that_is_its_own_parameters(
    choice: object,
) -> None:
    """instructor's Responses mode: the call forced and ``text.format`` its parameters."""
    tools = [{"type": "function", "function": {"name": "Person", "parameters": PERSON}}]
    fmt = {"type": "json_schema", "json_schema": {"name": "Person", "schema": PERSON,
                                                  "strict": True}}
    req = job(response_format=fmt, tools=tools, tool_choice=choice)
    built = build_now(req.response_format, req.tools, req.tool_choice, None)
    assert built.response_format is None and built.schema is None  # the call's grammar
    params = sampling(local_model(), req)
    assert params.grammar == built.tool_call and params.grammar is not None


@pytest.mark.parametrize("tools", [
    [{"type": "function", "function": {"name": "Person", "parameters": {
        **PERSON, "required": ["name"]}}}],  # other parameters
    [{"type": "function", "function": {"name": "Person", "parameters": PERSON}},
     {"type": "function", "function": {"name": "Other", "parameters": PERSON}}],  # two
])
def test_a_forced_call_refuses_any_other_response_format(tools: list[object]) -> None:
    fmt = {"type": "json_schema", "json_schema": {"name": "Person", "schema": PERSON}}
    with pytest.raises(UnsupportedParameter) as refused:
        sampling(local_model(), job(response_format=fmt, tools=tools, tool_choice="required"))
    assert refused.value.details[0]["field"] == "response_format"


def upstream_model(kind: str = "openai", stop: list[str] | None = None) -> ModelSpec:
    return ModelSpec.model_validate({
        "name": "up", "queue": "upstream",
        "upstream": {"url": "https://api.example/v1", "model": "m", "kind": kind},
        "defaults": {"stop": stop or []}})


def test_an_upstream_model_takes_openais_parameters() -> None:
    params = sampling(upstream_model(), job(temperature=0.1, top_p=0.5, seed=7, stop="x",
                                            max_tokens=9))
    assert (params.temperature, params.top_p, params.seed, params.stop, params.max_tokens) == (
        0.1, 0.5, 7, ["x"], 9)
    assert (params.top_k, params.min_p, params.repeat_penalty) == (0, 0.0, 1.0)
    assert not upstream_model().tokenizer_local  # TokenCounter.count answers None


def test_more_stop_strings_than_openai_takes_are_refused_naming_stop() -> None:
    spec = upstream_model(stop=["\nUser:", "\nSystem:"])
    with pytest.raises(UnsupportedParameter) as caught:
        sampling(spec, job(stop=["a", "b", "c"]))
    assert caught.value.status == 400
    assert caught.value.details[0]["field"] == "stop"
    assert "at most 4 stop strings" in caught.value.message
    assert len(sampling(upstream_model("vllm", ["\nUser:"]), job(stop=["a", "b", "c", "d"]))
               .stop) == 5  # vLLM takes more


class WithTopK(JobRequest):
    """A request with top_k, as the OpenAI surface is to add it."""

    top_k: int | None = None


def test_a_parameter_no_upstream_of_the_kind_has_is_refused_naming_it() -> None:
    request = WithTopK(messages=[{"role": "user", "content": "Hi"}], top_k=5)  # type: ignore[list-item]
    with pytest.raises(UnsupportedParameter) as caught:
        sampling(upstream_model(), request)
    assert [d["field"] for d in caught.value.details] == ["top_k"]
    assert "the openai upstream of this model has no `top_k`" in caught.value.message
    assert sampling(upstream_model("vllm"), request).top_k == 5


@pytest.mark.parametrize(("code", "status"), [
    ("upstream_error", 502), ("upstream_rejected", 400), ("timeout", 504),
    ("generation_error", 500)])
def test_a_failed_jobs_code_decides_the_blocking_calls_status(code: str, status: int) -> None:
    assert JobFailed("job_1", {"code": code, "message": "m"}).status == status
