"""The pydantic corpus (tests/pydantic_corpus.py) through /v1/chat/completions with the
official openai SDK, greedy, in json_schema mode and in tools mode: every answer
reported as a success validates with pydantic itself; a model chatq cannot enforce is
a 400 naming its keyword; nothing else (a job that fails ``schema_mismatch`` names
the keyword, an answer cut by ``max_tokens`` says ``length``, a job over its time
limit on a slow machine says ``timeout``)."""

from __future__ import annotations

from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import openai
import pytest
from pydantic import BaseModel, ValidationError

from shared.settings import DEV_API_KEY
from tests.conftest import Chatq
from tests.pydantic_corpus import CORPUS, Case, Person

MODEL = "smollm2-135m"
MAX_TOKENS = 160
SLOTS = 2  # asked at once (the demo model has 4 slots; fewer keeps each job quicker)
E2E = [c for c in CORPUS if c.e2e]
REFUSED = [c for c in CORPUS if c.refused is not None][:3]


@pytest.fixture
def sdk(chatq: Chatq) -> Iterator[openai.OpenAI]:
    # A long client timeout: a safety net for a stuck job, not a speed (all the asks are
    # queued at once on a tiny CPU model).
    with openai.OpenAI(base_url=f"{chatq.base_url}/v1", api_key=DEV_API_KEY,
                       max_retries=0, timeout=1800) as client:
        yield client


def ask(case: Case) -> list[Any]:
    return [{"role": "system", "content": "You answer with JSON only."},
            {"role": "user", "content": f"Give one realistic example of a {case.name}."}]


def schema_format(case: Case) -> dict[str, Any]:
    return {"type": "json_schema",
            "json_schema": {"name": case.name, "schema": case.model.model_json_schema()}}


def tool(case: Case) -> list[Any]:
    return [{"type": "function", "function": {
        "name": case.name, "description": f"Record a {case.name}.",
        "parameters": case.model.model_json_schema()}}]


def checked(model: type[BaseModel], text: str, finish_reason: str) -> str:
    """What became of one answer: ``valid`` (pydantic takes it) or ``length``; an
    answer reported complete that pydantic rejects fails the test."""
    if finish_reason == "length":
        return "length"
    try:
        model.model_validate_json(text)
    except ValidationError as exc:
        pytest.fail(f"a success pydantic rejects: {text!r}: {exc}")
    return "valid"


def mismatch(exc: openai.APIStatusError) -> str:
    """A failed job: schema_mismatch naming the keyword, or (on a slow machine) a job
    over its time limit, which says so; anything else fails the test."""
    body = exc.body
    assert isinstance(body, dict), body
    if exc.status_code == 504 and body.get("code") == "timeout":
        return "timeout"
    assert exc.status_code == 422, body
    assert body.get("code") == "schema_mismatch" and "`" in str(body.get("message")), body
    return "mismatch"


def json_schema_answer(sdk: openai.OpenAI, case: Case) -> str:
    try:
        completion = sdk.chat.completions.create(
            model=MODEL, messages=ask(case), response_format=schema_format(case),  # type: ignore[arg-type]
            max_tokens=MAX_TOKENS, temperature=0)
    except openai.APIStatusError as exc:
        return mismatch(exc)
    choice = completion.choices[0]
    return checked(case.model, choice.message.content or "", choice.finish_reason)


def tools_answer(sdk: openai.OpenAI, case: Case) -> str:
    try:
        completion = sdk.chat.completions.create(
            model=MODEL, messages=ask(case), tools=tool(case), max_tokens=MAX_TOKENS,
            temperature=0, tool_choice={"type": "function", "function": {"name": case.name}})
    except openai.APIStatusError as exc:
        return mismatch(exc)
    choice = completion.choices[0]
    if choice.finish_reason == "length":
        return "length"
    calls = choice.message.tool_calls
    assert choice.finish_reason == "tool_calls" and calls, choice
    assert calls[0].type == "function" and calls[0].function.name == case.name
    return checked(case.model, calls[0].function.arguments, "stop")


def test_the_corpus_through_the_api_validates_or_says_why(sdk: openai.OpenAI) -> None:
    """A few at once, within the worker's slots: it batches them (which may shift a
    greedy answer; any answer must validate), and none waits long in the queue."""
    assert len(E2E) >= 10
    asks = [(case, mode) for case in E2E for mode in (json_schema_answer, tools_answer)]
    with ThreadPoolExecutor(max_workers=SLOTS) as pool:
        done = list(pool.map(lambda ask: ask[1](sdk, ask[0]), asks))
    outcomes = {f"{case.name}/{mode.__name__}": o for (case, mode), o in zip(asks, done,
                                                                               strict=True)}
    # Most answers that ended in time are complete and valid (a tiny greedy model may run
    # out of tokens; how many end in time depends on the machine, so they are not counted).
    answers = [o for o in outcomes.values() if o != "timeout"]
    assert answers.count("valid") >= len(answers) * 2 // 3, outcomes


@pytest.mark.parametrize("case", REFUSED, ids=[c.name for c in REFUSED])
def test_models_chatq_cannot_enforce_are_400_naming_the_keyword(
    sdk: openai.OpenAI, case: Case
) -> None:
    assert case.refused is not None
    with pytest.raises(openai.BadRequestError) as as_schema:
        sdk.chat.completions.create(model=MODEL, messages=ask(case), max_tokens=8,
                                    response_format=schema_format(case))  # type: ignore[arg-type]
    with pytest.raises(openai.BadRequestError) as as_tool:
        sdk.chat.completions.create(model=MODEL, messages=ask(case), max_tokens=8,
                                    tools=tool(case), tool_choice="required")
    for refused in (as_schema, as_tool):
        body = refused.value.body
        assert isinstance(body, dict), body
        assert case.refused in str(body.get("param")), body


def test_the_sdk_parse_helper_gets_a_validated_object_with_bounds(sdk: openai.OpenAI) -> None:
    """What instructor and pydantic-ai do: a pydantic model with Field(ge=0, le=150) as the
    response format (the SDK makes it a strict schema), the answer parsed into it."""
    completion = sdk.chat.completions.parse(
        model=MODEL, messages=[{"role": "user", "content": "Ada Lovelace was 36."}],
        response_format=Person, max_tokens=MAX_TOKENS, temperature=0)
    choice = completion.choices[0]
    assert choice.finish_reason == "stop"
    person = choice.message.parsed
    assert isinstance(person, Person) and 0 <= person.age <= 150
