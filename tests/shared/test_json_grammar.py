"""JSON Schema to grammar (response_format and forced tool calls): what is enforced,
and every other construct refused, named where it is."""

from __future__ import annotations

from typing import Any, Literal

import llama_cpp
import pytest
from llama_cpp import Llama
from pydantic import BaseModel, Field

from shared.json_grammar import (
    UnsupportedSchema,
    check_schema,
    inline_refs,
    response_format_grammar,
    schema_grammar,
)
from shared.registry import Registry
from shared.schemas import ResponseFormat
from shared.settings import DEFAULT_REGISTRY

WHERE = "response_format.json_schema.schema"


class Person(BaseModel):
    name: str = Field(max_length=20, description="Full name")
    age: int
    tags: list[str] = Field(max_length=3)
    nick: str | None = None
    anything: Any = None  # {"title": ...}: annotations only
    values: list[Any] = []  # items: {}
    table: dict[str, Any] = {}  # additionalProperties: true


class Team(BaseModel):
    lead: Person
    members: list[Person]


class Cat(BaseModel):
    pet_type: Literal["cat"]
    meows: int


class Dog(BaseModel):
    pet_type: Literal["dog"]
    barks: float


class Owner(BaseModel):
    pet: Cat | Dog = Field(discriminator="pet_type")  # oneOf, told apart by pet_type


def _fmt(schema: dict[str, Any]) -> ResponseFormat:
    return ResponseFormat.model_validate(
        {"type": "json_schema", "json_schema": {"name": "x", "schema": schema}})


def grammar(schema: dict[str, Any]) -> str:
    return response_format_grammar(_fmt(schema), WHERE) or ""


@pytest.fixture(scope="module")
def vocab_llm() -> Llama:
    registry = Registry.load(DEFAULT_REGISTRY)
    path = registry.gguf_path(registry.models[registry.default_name])
    return Llama(model_path=str(path), vocab_only=True, verbose=False)


def accepted_by_llama_cpp(llm: Llama, gbnf: str) -> bool:
    vocab = llama_cpp.llama_model_get_vocab(llm.model)
    sampler = llama_cpp.llama_sampler_init_grammar(vocab, gbnf.encode(), b"root")
    if sampler:
        llama_cpp.llama_sampler_free(sampler)
    return bool(sampler)


# --- enforced --------------------------------------------------------------------------


ENFORCED: list[dict[str, Any]] = [
    Person.model_json_schema(),
    Team.model_json_schema(),  # $defs and $ref, inlined
    {"type": "string", "pattern": "^[a-z]{2,5}-[0-9]+$"},
    {"type": "string", "pattern": "^(ab|cd)?x[.]y$"},
    {"type": "string", "pattern": "^\\(a\\)[-a-z]*[+]?$"},
    {"oneOf": [{"type": "string"}, {"type": "integer"}]},
    {"oneOf": [{"enum": ["a", "b"]}, {"const": "c"}, {"type": "null"}]},
    Owner.model_json_schema(),
    {"type": "array", "prefixItems": [{"type": "string"}, {"type": "integer"}]},
    {"type": "object", "properties": {"when": {"type": "string", "format": "date-time"},
                                      "id": {"type": "string", "format": "uuid4"}}},
    {"type": ["string", "null"]},
]


@pytest.mark.parametrize("schema", ENFORCED)
def test_enforceable_schemas_become_grammars_llama_cpp_accepts(
    schema: dict[str, Any], vocab_llm: Llama
) -> None:
    gbnf = grammar(schema)
    assert "root ::=" in gbnf
    assert accepted_by_llama_cpp(vocab_llm, gbnf)


def test_json_object_is_the_generic_json_grammar_and_text_none() -> None:
    assert "root   ::= object" in (
        response_format_grammar(ResponseFormat(type="json_object"), WHERE) or "")
    assert response_format_grammar(ResponseFormat(type="text"), WHERE) is None
    assert response_format_grammar(None, WHERE) is None


def test_strings_cannot_hold_raw_control_characters() -> None:
    gbnf = grammar({"type": "object", "properties": {"a": {"type": "string"}}})
    assert r'char ::= [^"\\\x7F\x00-\x1F]' in gbnf
    assert r'char ::= [^"\\] |' not in schema_grammar(
        {"type": "string", "maxLength": 3}, "p")


def test_annotations_are_dropped_not_refused() -> None:
    schema = {"title": "T", "description": "d", "type": "object", "$schema": "x",
              "properties": {"title": {"type": "string", "examples": ["a"]},
                             "any": {"title": "Any"}}}
    any_value = {"type": ["object", "array", "string", "number", "boolean", "null"]}
    assert check_schema(schema, "p") == {
        "type": "object", "properties": {"title": {"type": "string"}, "any": any_value}}


# --- refused -----------------------------------------------------------------------------


@pytest.mark.parametrize(("schema", "path"), [
    ({"type": "integer", "minimum": 0}, "p.minimum"),
    ({"type": "integer", "maximum": 3}, "p.maximum"),
    ({"type": "string", "format": "email"}, "p.format"),
    ({"type": "object", "properties": {"a": {"type": "string", "format": "email"}}},
     "p.properties.a.format"),
    ({"not": {"type": "string"}}, "p.not"),
    ({"allOf": [{"type": "string"}]}, "p.allOf"),
    ({"type": "object", "properties": {"a": {"type": "string"}}, "minProperties": 1},
     "p.minProperties"),
    ({"type": "array", "items": {"type": "string"}, "uniqueItems": True}, "p.uniqueItems"),
    ({"type": ["string", "null"], "maxLength": 3}, "p.maxLength"),
    ({"anyOf": [{"type": "string"}], "maxLength": 3}, "p.maxLength"),
    ({"anyOf": [{"type": "string"}], "properties": {}}, "p.properties"),
    ({"anyOf": [{"type": "string"}, {"type": "integer", "minimum": 1}]}, "p.anyOf[1].minimum"),
    ({"type": "object", "required": ["a"]}, "p.required"),
    ({"type": "object", "required": ["x"], "properties": {}}, "p.required"),
    ({"type": "object", "properties": {"a": {"type": "thing"}}}, "p.properties.a.type"),
    ({"type": "strings"}, "p.type"),
    ({"type": "string", "pattern": "a+"}, "p.pattern"),  # unanchored
    ({"type": "string", "pattern": "^.+$"}, "p.pattern"),
    ({"type": "string", "pattern": "^[^,]+$"}, "p.pattern"),
    ({"type": "string", "pattern": "^\\d+$"}, "p.pattern"),
    ({"type": "string", "pattern": "^[ -~]+$"}, "p.pattern"),  # reaches " and \
    ({"type": "string", "pattern": '^a"b$'}, "p.pattern"),
    ({"type": "string", "pattern": "^x(?=a)$"}, "p.pattern"),  # the converter refuses it
    ({"type": "string", "pattern": "^x\\.y$"}, "p.pattern"),  # llama.cpp cannot parse it
    ({"type": "string", "pattern": "^[a\\]]$"}, "p.pattern"),
    ({"type": "string", "pattern": "^a|b$"}, "p.pattern"),  # quotes in the alternatives
    ({"type": "object", "required": "a", "properties": {"a": {}}}, "p.required"),
    # oneOf is read as anyOf: branches that a value could match both are refused
    ({"oneOf": [{"type": "number"}, {"type": "integer"}]}, "p.oneOf[1]"),
    ({"oneOf": [{"enum": ["a", "b"]}, {"type": "string"}]}, "p.oneOf[1]"),
    ({"oneOf": [{"type": "object", "properties": {"a": {"type": "string"}}},
                {"type": "object", "properties": {"b": {"type": "string"}}}]}, "p.oneOf[1]"),
    ({"oneOf": [{"type": "string"}, {"type": "null"}, {}]}, "p.oneOf[2]"),
    (False, "p"),
])
def test_schemas_a_grammar_cannot_enforce_are_refused_naming_them(
    schema: Any, path: str
) -> None:
    with pytest.raises(UnsupportedSchema) as caught:
        schema_grammar(schema, "p")
    assert caught.value.path == path


def test_refusals_are_named_under_the_callers_param() -> None:
    with pytest.raises(UnsupportedSchema) as caught:
        grammar({"type": "object", "properties": {"a": {"type": "integer", "maximum": 9}}})
    assert caught.value.path == f"{WHERE}.properties.a.maximum"


def test_local_refs_are_inlined_and_others_refused() -> None:
    schema = {"type": "object", "properties": {"loc": {"$ref": "#/$defs/Loc"}},
              "$defs": {"Loc": {"type": "object", "properties": {"city": {"type": "string"}}}}}
    inlined = inline_refs(schema, "p")
    assert inlined == {"type": "object", "properties": {
        "loc": {"type": "object", "properties": {"city": {"type": "string"}}}}}
    with pytest.raises(UnsupportedSchema, match="only local") as remote:
        inline_refs({"$ref": "https://example.com/s.json"}, "p")
    assert remote.value.path == "p.$ref"
    with pytest.raises(UnsupportedSchema, match="points to nothing"):
        inline_refs({"$ref": "#/$defs/Missing"}, "p")
    with pytest.raises(UnsupportedSchema, match="recursive"):
        inline_refs({"properties": {"a": {"$ref": "#"}}}, "p")
