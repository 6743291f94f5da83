"""Client libraries people use, pointed at chatq, greedy decoding.

- Structured output (issue 28): instructor and pydantic-ai, with the model everyone
  writes first, ``age: int = Field(ge=0, le=150)``. chatq enforces the bound in the
  grammar, so the first answer validates: no library retry may mask a bad one
  (instructor's ``max_retries=0``, pydantic-ai's ``retries=0``). A schema chatq
  cannot enforce reaches each library as the ``400`` naming the keyword.
- The OpenAI Agents SDK on ``/v1/responses`` (issue 25): a tiny agent with one
  function tool (tracing off: nothing leaves the machine).
"""

from __future__ import annotations

import asyncio
import dataclasses
import json
from collections.abc import Iterator
from typing import Any

import agents
import instructor
import openai
import pytest
from instructor.core import InstructorRetryException
from pydantic import BaseModel, Field
from pydantic_ai import Agent, NativeOutput, ToolOutput
from pydantic_ai.exceptions import ModelHTTPError
from pydantic_ai.models.openai import OpenAIChatModel, OpenAIResponsesModel
from pydantic_ai.providers.openai import OpenAIProvider

from shared.settings import DEV_API_KEY
from tests.conftest import Chatq

MODEL = "smollm2-135m"
ASK = "Ada Lovelace is 36 years old. Give her name and age as JSON."
# Unconstrained, the model would write 969: the grammar keeps it within the bound.
ASK_OVER = "Methuselah is 969 years old. Give his name and age as JSON."
INSTRUCTOR_MODES = [instructor.Mode.TOOLS, instructor.Mode.JSON_SCHEMA,
                    instructor.Mode.RESPONSES_TOOLS]


class Person(BaseModel):
    name: str
    age: int = Field(ge=0, le=150)


class Rated(BaseModel):
    """A decimal bound: the grammar cannot write it exactly, so chatq refuses it."""

    name: str
    score: float = Field(le=0.5)


def _valid(person: object) -> Person:
    assert isinstance(person, Person)
    assert 0 <= person.age <= 150 and person.name
    return Person.model_validate(person.model_dump())  # pydantic validates it again


@pytest.fixture
def sdk(chatq: Chatq) -> Iterator[openai.OpenAI]:
    with openai.OpenAI(base_url=f"{chatq.base_url}/v1", api_key=DEV_API_KEY,
                       max_retries=0) as client:
        yield client


def _instructor(sdk: openai.OpenAI, mode: instructor.Mode, model: type[BaseModel],
                ask: str) -> Any:
    client = instructor.from_openai(sdk, mode=mode)
    if mode is instructor.Mode.RESPONSES_TOOLS:
        return client.responses.create(model=MODEL, response_model=model, max_retries=0,
                                       temperature=0, max_output_tokens=64, input=ask)
    return client.chat.completions.create(
        model=MODEL, response_model=model, max_retries=0, temperature=0, max_tokens=64,
        messages=[{"role": "user", "content": ask}])


@pytest.mark.parametrize("ask", [ASK, ASK_OVER])
@pytest.mark.parametrize("mode", INSTRUCTOR_MODES)
def test_instructor_gets_a_validated_object(sdk: openai.OpenAI, mode: instructor.Mode,
                                            ask: str) -> None:
    """TOOLS: a named tool call, its parameters the model's schema; JSON_SCHEMA:
    ``response_format`` json_schema; RESPONSES_TOOLS: ``/v1/responses`` with a named
    call and ``text.format`` the same schema (taken: it is the call's own)."""
    _valid(_instructor(sdk, mode, Person, ask))


@pytest.mark.parametrize(("mode", "param"), [
    (instructor.Mode.TOOLS, "tools[0].function.parameters.properties.score.maximum"),
    (instructor.Mode.JSON_SCHEMA, "response_format.json_schema.schema.properties.score.maximum"),
    (instructor.Mode.RESPONSES_TOOLS, "tools[0].parameters.properties.score.maximum"),
])
def test_instructor_gets_the_400_naming_the_keyword(sdk: openai.OpenAI, mode: instructor.Mode,
                                                    param: str) -> None:
    with pytest.raises(InstructorRetryException) as caught:
        _instructor(sdk, mode, Rated, ASK)
    cause = caught.value.__cause__
    assert isinstance(cause, openai.BadRequestError)
    assert cause.code == "unsupported_parameter" and cause.param == param


def _pydantic_ai(chatq: Chatq, output: Any, model_class: type = OpenAIChatModel,
                 stream: bool = False) -> Any:
    async def run() -> Any:
        async with openai.AsyncOpenAI(base_url=f"{chatq.base_url}/v1", api_key=DEV_API_KEY,
                                      max_retries=0) as client:
            model = model_class(MODEL, provider=OpenAIProvider(openai_client=client))
            agent = Agent(model, output_type=output, retries=0,
                          model_settings={"temperature": 0, "max_tokens": 64})
            if not stream:
                return (await agent.run(ASK)).output
            async with agent.run_stream(ASK) as streamed:
                return await streamed.get_output()

    return asyncio.run(run())


@pytest.mark.parametrize("stream", [False, True], ids=["run", "run_stream"])
@pytest.mark.parametrize("output", [ToolOutput, NativeOutput])
def test_pydantic_ai_gets_a_validated_object(chatq: Chatq, output: type, stream: bool) -> None:
    """``ToolOutput`` (pydantic-ai's default: a forced ``final_result`` call) and
    ``NativeOutput`` (``response_format`` json_schema), whole and streamed."""
    _valid(_pydantic_ai(chatq, output(Person), stream=stream))


@pytest.mark.parametrize("output", [ToolOutput, NativeOutput])
def test_pydantic_ai_on_the_responses_api_gets_a_validated_object(chatq: Chatq,
                                                                  output: type) -> None:
    """``OpenAIResponsesModel``: a forced function call / ``text.format`` json_schema."""
    _valid(_pydantic_ai(chatq, output(Person), OpenAIResponsesModel))


def test_pydantic_ai_gets_the_400_naming_the_keyword(chatq: Chatq) -> None:
    with pytest.raises(ModelHTTPError) as caught:
        _pydantic_ai(chatq, ToolOutput(Rated))
    assert caught.value.status_code == 400
    assert isinstance(caught.value.body, dict)
    assert caught.value.body["param"] == "tools[0].function.parameters.properties.score.maximum"


# --- the OpenAI Agents SDK -------------------------------------------------------------


class AnswerAfterTheTool(agents.AgentHooks[Any]):
    """Once the tool has answered, the agent must answer in text (``tool_choice``
    ``none``): the tiny model, left to ``auto``, calls the tool again and again."""

    async def on_tool_end(self, context: Any, agent: agents.Agent[Any], tool: Any,
                          result: str) -> None:
        agent.model_settings = dataclasses.replace(agent.model_settings, tool_choice="none")


def _weather_agent(chatq: Chatq, **options: Any) -> tuple[Any, list[str], list[Any]]:
    """The run of an agent with one function tool, forced to call it first; the
    cities the tool was asked about; and chatq's stored input of each response."""
    agents.set_tracing_disabled(True)
    asked: list[str] = []

    @agents.function_tool
    def get_weather(city: str) -> str:
        """The current weather in a city."""
        asked.append(city)
        return f"Sunny in {city}."

    async def run() -> Any:
        async with openai.AsyncOpenAI(base_url=f"{chatq.base_url}/v1", api_key=DEV_API_KEY,
                                      max_retries=0) as client:
            agent = agents.Agent(
                name="weather", instructions="You report the weather.", tools=[get_weather],
                model=agents.OpenAIResponsesModel(model=MODEL, openai_client=client),
                model_settings=agents.ModelSettings(tool_choice="required", max_tokens=64,
                                                    temperature=0),
                **options)
            result = await agents.Runner.run(agent, "What is the weather in Paris?",
                                             max_turns=3)
            inputs = [(await client.responses.input_items.list(r.response_id, order="asc")).data
                      for r in result.raw_responses]
            return result, inputs

    result, inputs = asyncio.run(run())
    return result, asked, inputs


def _kinds(result: Any) -> list[str]:
    return [type(item).__name__ for item in result.new_items]


def test_an_agents_sdk_agent_calls_its_tool_and_returns_its_result(chatq: Chatq) -> None:
    result, asked, _ = _weather_agent(chatq, tool_use_behavior="stop_on_first_tool")
    assert _kinds(result) == ["ToolCallItem", "ToolCallOutputItem"]
    call = result.new_items[0].raw_item
    assert call.type == "function_call" and call.name == "get_weather"
    assert call.call_id.startswith("call_")
    assert len(asked) == 1 and json.loads(call.arguments) == {"city": asked[0]}
    assert result.new_items[1].output == f"Sunny in {asked[0]}."
    assert result.final_output == f"Sunny in {asked[0]}."  # the tool's result
    assert [r.response_id[:5] for r in result.raw_responses] == ["resp_"]


def test_an_agents_sdk_agent_answers_after_its_tool(chatq: Chatq) -> None:
    """The whole loop: call, the tool's output sent back as ``function_call_output``,
    then a text answer. chatq's stored input of the last response shows the model
    read the call and its result (what the tiny model then writes is not judged)."""
    result, asked, inputs = _weather_agent(chatq, reset_tool_choice=False,
                                           hooks=AnswerAfterTheTool())
    assert _kinds(result) == ["ToolCallItem", "ToolCallOutputItem", "MessageOutputItem"]
    assert len(asked) == 1 and len(result.raw_responses) == 2
    assert isinstance(result.final_output, str) and result.final_output
    call_id = result.new_items[0].raw_item.call_id
    last = [(i.type, getattr(i, "call_id", None)) for i in inputs[1]]
    assert last == [("message", None), ("function_call", call_id),
                    ("function_call_output", call_id)]
    assert inputs[1][2].output == f"Sunny in {asked[0]}."


@pytest.mark.parametrize("stream", [False, True], ids=["run", "run_streamed"])
def test_an_agents_sdk_agent_returns_a_validated_object(chatq: Chatq, stream: bool) -> None:
    """``output_type=Person``: ``text.format`` json_schema (strict) on ``/v1/responses``;
    streamed, through the typed events."""
    agents.set_tracing_disabled(True)

    async def run() -> Any:
        async with openai.AsyncOpenAI(base_url=f"{chatq.base_url}/v1", api_key=DEV_API_KEY,
                                      max_retries=0) as client:
            agent = agents.Agent(
                name="extract", instructions="Extract the person.", output_type=Person,
                model=agents.OpenAIResponsesModel(model=MODEL, openai_client=client),
                model_settings=agents.ModelSettings(max_tokens=64, temperature=0))
            if not stream:
                return (await agents.Runner.run(agent, ASK)).final_output
            streamed = agents.Runner.run_streamed(agent, ASK)
            kinds = {event.data.type async for event in streamed.stream_events()
                     if event.type == "raw_response_event"}
            assert {"response.created", "response.output_text.delta",
                    "response.completed"} <= kinds
            return streamed.final_output

    _valid(asyncio.run(run()))
