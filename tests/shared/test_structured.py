"""response_format as a grammar: what is enforced, and every other construct refused."""

from __future__ import annotations

from typing import Any

import pytest
from pydantic import BaseModel, Field

from shared.schemas import ResponseFormat
from shared.structured import UnenforceableSchema, check_schema, grammar_for


class Person(BaseModel):
    name: str = Field(max_length=20, description="Full name")
    age: int
    tags: list[str] = Field(max_length=3)
    nick: str | None = None


class Team(BaseModel):
    lead: Person
    members: list[Person]


def _fmt(schema: dict[str, Any]) -> ResponseFormat:
    return ResponseFormat.model_validate(
        {"type": "json_schema", "json_schema": {"name": "x", "schema": schema}})


def test_pydantic_schemas_become_grammars() -> None:
    for model in (Person, Team):
        grammar = grammar_for(_fmt(model.model_json_schema()))
        assert grammar is not None and "root ::=" in grammar


def test_json_object_is_the_generic_json_grammar_and_text_none() -> None:
    assert "root   ::= object" in (grammar_for(ResponseFormat(type="json_object")) or "")
    assert grammar_for(ResponseFormat(type="text")) is None
    assert grammar_for(None) is None


def test_strings_cannot_hold_raw_control_characters() -> None:
    grammar = grammar_for(_fmt({"type": "object", "properties": {"a": {"type": "string"}}}))
    assert grammar is not None
    assert r'char ::= [^"\\\x7F\x00-\x1F]' in grammar


@pytest.mark.parametrize(("schema", "where"), [
    ({"type": "integer", "minimum": 0}, "/minimum"),
    ({"type": "string", "pattern": "^a+$"}, "/pattern"),
    ({"oneOf": [{"type": "string"}, {"type": "integer"}]}, "/oneOf"),
    ({"allOf": [{"type": "string"}]}, "/allOf"),
    ({"type": "object", "properties": {"a": {"type": "string", "format": "email"}}},
     "/properties/a/format"),
    ({"type": "object", "properties": {"a": {"type": "string"}}, "minProperties": 1},
     "/minProperties"),
    ({"type": "array", "items": {"type": "string"}, "uniqueItems": True}, "/uniqueItems"),
    ({"$ref": "https://example.com/schema.json"}, "/$ref"),
    ({"$ref": "#/$defs/Missing"}, "/$ref"),
    ({"anyOf": [{"type": "string"}], "maxLength": 3}, "/maxLength"),
    ({"type": "object", "required": ["x"], "properties": {}}, "/required"),
    ({"type": "strings"}, "/type"),
])
def test_unenforceable_constructs_are_refused_naming_them(
    schema: dict[str, Any], where: str
) -> None:
    with pytest.raises(UnenforceableSchema) as refused:
        check_schema(schema)
    assert refused.value.where == where


def test_annotations_are_dropped_not_refused() -> None:
    schema = {"title": "T", "description": "d", "type": "object", "$schema": "x",
              "properties": {"title": {"type": "string", "examples": ["a"]}}}
    assert check_schema(schema) == {"type": "object",
                                    "properties": {"title": {"type": "string"}}}
