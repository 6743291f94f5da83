"""A finished answer against the schema it was asked to match: what fails the job
(``schema_mismatch``, naming the keyword and where), and what does not."""

from __future__ import annotations

import json
from typing import Any

from shared.answers import mismatch
from shared.tools import toolset_of

PERSON: dict[str, Any] = {
    "type": "object",
    "properties": {"age": {"type": "integer", "minimum": 0, "maximum": 150},
                   "born": {"type": "string", "format": "date"},
                   "pet": {"$ref": "#/$defs/Pet"}},
    "required": ["age"],
    "$defs": {"Pet": {"type": "object", "properties": {"name": {"type": "string"}},
                      "required": ["name"]}},
}


def test_a_valid_answer_passes() -> None:
    answer = json.dumps({"age": 30, "born": "1994-02-28", "pet": {"name": "Rex"}})
    assert mismatch(answer, PERSON, None, "job_1") is None


def test_a_date_the_grammar_only_approximates_fails_naming_format() -> None:
    error = mismatch('{"age": 30, "born": "2024-02-31"}', PERSON, None, "job_1")
    assert error is not None and error["code"] == "schema_mismatch"
    assert "`format`" in error["message"] and "$.born" in error["message"]


def test_each_keyword_is_named_with_where_it_failed() -> None:
    error = mismatch('{"age": 151}', PERSON, None, "job_1")
    assert error is not None and "`maximum`" in error["message"]
    assert "$.age" in error["message"]
    error = mismatch('{"age": 3, "pet": {}}', PERSON, None, "job_1")  # through the $ref
    assert error is not None and "`required`" in error["message"]


def test_an_answer_that_is_not_json_fails() -> None:
    error = mismatch('{"age": ', PERSON, None, "job_1")
    assert error is not None and "not JSON" in error["message"]


def test_tool_call_arguments_are_checked_against_their_parameters() -> None:
    tools = toolset_of([{"type": "function", "function": {"name": "f", "parameters": PERSON}}],
                       "required")
    assert tools is not None
    good = '{"name": "f", "arguments": {"age": 3}}'
    assert mismatch(good, None, tools.to_json(), "job_1") is None
    error = mismatch('{"name": "f", "arguments": {"age": -3}}', None, tools.to_json(), "job_1")
    assert error is not None and "`minimum`" in error["message"]
    assert "arguments of f" in error["message"]


def test_free_text_and_json_object_answers_are_not_checked() -> None:
    assert mismatch("just words", None, None, "job_1") is None


def test_date_times_and_times_are_checked_by_python() -> None:
    schema = {"type": "object", "properties": {"at": {"type": "string", "format": "date-time"},
                                               "t": {"type": "string", "format": "time"}}}
    assert mismatch('{"at": "2024-02-29T12:30:00Z", "t": "07:30:00+02:00"}', schema, None,
                    "job_1") is None
    for bad in ('{"at": "2024-02-31T12:30:00Z"}', '{"at": "2024-02-28T12:30:00"}',
                '{"t": "25:00:00Z"}'):
        error = mismatch(bad, schema, None, "job_1")
        assert error is not None and "`format`" in error["message"], bad
