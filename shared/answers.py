"""A finished answer checked against the schema it was asked to match.

The grammar (:mod:`shared.json_grammar`) admits only JSON of the schema's shape,
but some keywords it enforces only approximately: a ``date`` of 2024-02-31 passes
its digits, a ``format`` checker may be stricter than its rule. So the worker
validates every structured answer against the whole schema with ``jsonschema``
before the job succeeds (:func:`mismatch`):

- ``response_format`` json_schema: the answer, parsed, against the caller's schema
  (its ``$defs`` and local ``$ref`` s resolved by ``jsonschema``; remote ones were
  refused at submit, so nothing is fetched).
- Tool calls read from the answer (:func:`shared.tools.parse_calls`): each call's
  arguments against its function's ``parameters``.

What must always hold: an answer that does not validate never reaches a caller as a
success. It fails the job with ``schema_mismatch``, the message naming the keyword
and where in the answer (``properties.born.format at $.born: '2024-02-31' is not a
'date'``); the text stays on the job as partial output. An answer cut short by
``max_tokens`` (``finish_reason`` ``length``) is not checked: it says it is
incomplete, as OpenAI's does.
"""

from __future__ import annotations

import datetime as dt
import json
from typing import Any

from jsonschema import Draft202012Validator, FormatChecker
from jsonschema.exceptions import ValidationError, best_match

from shared.tools import ToolSet, parse_calls

CODE = "schema_mismatch"
_MAX_MESSAGE = 300


def _formats() -> FormatChecker:
    """Draft 2020-12's format checks, with ``date-time`` and ``time`` read by Python
    (jsonschema checks them only with an optional package chatq does not need): a
    date-time of 2024-02-31 passes the grammar's digits and fails here."""
    checker = FormatChecker(list(Draft202012Validator.FORMAT_CHECKER.checkers))

    @checker.checks("date-time", raises=ValueError)
    def _date_time(value: object) -> bool:
        if not isinstance(value, str):
            return True
        parsed = dt.datetime.fromisoformat(value)
        return value[10:11] in "Tt" and parsed.tzinfo is not None

    @checker.checks("time", raises=ValueError)
    def _time(value: object) -> bool:
        return not isinstance(value, str) or dt.time.fromisoformat(value).tzinfo is not None

    return checker


FORMATS = _formats()


def _why(error: ValidationError) -> str:
    keyword = ".".join(str(p) for p in error.relative_schema_path) or str(error.validator)
    message = error.message
    if len(message) > _MAX_MESSAGE:
        message = message[:_MAX_MESSAGE] + "..."
    return f"`{error.validator}` ({keyword}) at {error.json_path}: {message}"


def schema_problem(value: Any, schema: dict[str, Any]) -> str | None:
    """Why ``value`` does not validate against ``schema`` (keyword first), or None."""
    validator = Draft202012Validator(schema, format_checker=FORMATS)
    try:
        error = best_match(validator.iter_errors(value))
    except Exception as exc:  # e.g. a regex Python reads differently: fail closed
        return f"the answer could not be checked against the schema ({exc})"
    return None if error is None else _why(error)


def _answer_problem(answer: str, schema: dict[str, Any]) -> str | None:
    try:
        value = json.loads(answer)
    except ValueError as exc:
        return f"the answer is not JSON ({exc})"
    return schema_problem(value, schema)


def _calls_problem(answer: str, toolset: ToolSet, job_id: str) -> str | None:
    params = {f["name"]: f.get("parameters") for f in toolset.functions}
    for call in parse_calls(answer, toolset, job_id):
        name = call["function"]["name"]
        schema = params.get(name)
        problem = schema and schema_problem(json.loads(call["function"]["arguments"]), schema)
        if problem:
            return f"the arguments of {name}: {problem}"
    return None


def mismatch(answer: str, schema: dict[str, Any] | None, tools: dict[str, Any] | None,
             job_id: str) -> dict[str, str] | None:
    """The job's error when its finished answer does not match what it asked for."""
    problem = None
    if schema is not None:
        problem = _answer_problem(answer, schema)
        if problem:
            problem = f"the answer does not match response_format's schema: {problem}"
    toolset = ToolSet.from_json(tools)
    if problem is None and toolset is not None:
        problem = _calls_problem(answer, toolset, job_id)
    return None if problem is None else {"code": CODE, "message": problem}
