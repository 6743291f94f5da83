"""JSON Schema to grammar (response_format and forced tool calls): what is enforced,
and every other construct refused, named where it is."""

from __future__ import annotations

import time
from typing import Any, Literal

import pytest
from llama_cpp import Llama
from pydantic import BaseModel, Field

from shared.json_grammar import (
    DEFAULT_BUDGET,
    MAX_GRAMMAR_NESTING,
    OPTIONAL_SPAN,
    GrammarBudget,
    UnsupportedSchema,
    check_schema,
    grammar_problem,
    inline_refs,
    response_format_grammar,
    schema_grammar,
)
from shared.schemas import ResponseFormat
from tests.grammar_check import accepts, parses, vocab_only

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
    return vocab_only()


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
    assert parses(vocab_llm, gbnf)


# (schema, texts the grammar admits, texts it refuses): the keywords llama-cpp-python's
# converter ignores, enforced by chatq's own rules (shared.gbnf).
EXAMPLES: list[tuple[dict[str, Any], list[str], list[str]]] = [
    ({"type": "integer", "minimum": 0, "maximum": 150}, ["0", "42", "99", "150"],
     ["-1", "151", "1000", "007", "1.0"]),
    ({"type": "integer", "exclusiveMinimum": -10, "exclusiveMaximum": 10},
     ["-9", "0", "9"], ["-10", "10", "-100"]),
    ({"type": "integer", "minimum": -273}, ["-273", "-1", "0", "123456789"], ["-274", "-1000"]),
    ({"type": "integer", "maximum": -5}, ["-5", "-123456"], ["-4", "0", "5"]),
    ({"type": "integer", "minimum": 1000, "maximum": 2999}, ["1000", "2024", "2999"],
     ["999", "3000", "12000"]),
    ({"type": "integer", "multipleOf": 5, "minimum": 0, "maximum": 20}, ["0", "15", "20"],
     ["3", "25"]),
    ({"type": "integer", "multipleOf": 10}, ["0", "-30", "12340"], ["5", "101"]),
    ({"type": "number", "minimum": 0, "maximum": 1}, ["0", "0.25", "1", "1.000"],
     ["1.5", "-0.1", "1.01", "2"]),
    ({"type": "number", "exclusiveMinimum": 0}, ["0.001", "3", "12.5"], ["0", "0.000", "-1"]),
    ({"type": "number", "minimum": -90, "maximum": 90}, ["-90", "-45.5", "0", "89.9", "90"],
     ["-90.5", "90.1", "91"]),
    ({"type": "number", "exclusiveMaximum": 0}, ["-0.5", "-12"], ["0", "0.5"]),
    ({"type": "string", "minLength": 2, "maxLength": 4}, ['"ab"', '"abcd"'], ['"a"', '"abcde"']),
    ({"type": "string", "format": "date"}, ['"2024-02-29"'], ['"2024-2-29"', '"yesterday"']),
    ({"type": "string", "format": "time"},
     ['"12:30:00Z"', '"23:59:59.123+02:00"', '"07:30:00.123456-05:00"'],
     ['"24:00:00Z"', '"12:30:00"', '"12:30:00.1234567890Z"']),
    ({"type": "string", "format": "date-time"},
     ['"2024-02-29T12:30:00Z"', '"2024-05-01T09:30:05.123456+01:00"'],
     ['"2024-02-29 12:30"', '"2024-02-29T12:30:00"']),
    ({"type": "string", "format": "uuid"}, ['"123e4567-e89b-12d3-a456-426614174000"'],
     ['"123e4567"']),
    ({"type": "string", "format": "email"}, ['"ada.lovelace+x@example.co.uk"'],
     ['"ada"', '"@example.com"', '"a@b"']),
    ({"type": "string", "pattern": "^\\d{3}-\\d{4}$"}, ['"555-1234"'], ['"5551234"']),
    ({"type": "string", "pattern": "^\\w+@\\w+\\.com$"}, ['"bob_1@site.com"'],
     ['"bob@site.org"']),
    ({"type": "string", "pattern": "^[^,]+$"}, ['"a b"'], ['"a,b"', '""']),
    ({"type": "string", "pattern": "^.{2}$"}, ['"ab"', '"é!"'], ['"a"', '"abc"']),
    ({"type": "string", "pattern": "^[A-Z]{2}(?:-[0-9]+)?$"}, ['"AB"', '"AB-12"'], ['"AB-"']),
    ({"type": "string", "pattern": "^(cat|dog)s?$"}, ['"cats"', '"dog"'], ['"cow"']),
    ({"type": "string", "pattern": "ab"}, ['"ab"', '"xaby"'], ['"ba"']),  # unanchored
    ({"type": "string", "pattern": "^[ -~]{1,3}$"}, ['"a\\"b"', '"\\\\"'], ['"abcd"']),
    ({"type": "string", "pattern": '^a"b$'}, ['"a\\"b"'], ['"ab"']),
    ({"type": "array", "prefixItems": [{"type": "integer"}, {"type": "string"}],
      "minItems": 2, "maxItems": 2}, ['[1, "a"]'], ['[1]', '["a", 1]']),
    ({"type": "object", "additionalProperties": {"type": "integer", "minimum": 0}},
     ['{"a": 1, "b": 2}'], ['{"a": -1}']),
    ({"anyOf": [{"type": "integer", "minimum": 1}, {"type": "null"}]}, ["1", "null"], ["0"]),
    ({"enum": [1, "a", None, True]}, ["1", '"a"', "null", "true"], ["2", "false"]),
]


@pytest.mark.parametrize(("schema", "good", "bad"), EXAMPLES)
def test_bounds_formats_and_patterns_are_enforced_by_the_grammar(
    schema: dict[str, Any], good: list[str], bad: list[str], vocab_llm: Llama
) -> None:
    gbnf = grammar(schema)
    assert parses(vocab_llm, gbnf)
    assert [t for t in good if not accepts(vocab_llm, gbnf, t)] == []
    assert [t for t in bad if accepts(vocab_llm, gbnf, t)] == []


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
    ({"type": "number", "maximum": 0.5}, "p.maximum"),  # a decimal bound
    ({"type": "number", "exclusiveMinimum": 1.25}, "p.exclusiveMinimum"),
    ({"type": "number", "multipleOf": 0.01}, "p.multipleOf"),
    ({"type": "integer", "multipleOf": 3}, "p.multipleOf"),  # unbounded, 3 does not divide 100
    ({"type": "integer", "multipleOf": 7, "minimum": 0}, "p.multipleOf"),  # one bound
    ({"type": "integer", "minimum": 5, "maximum": 4}, "p.maximum"),  # admits nothing
    ({"type": "integer", "minimum": True}, "p.minimum"),
    ({"type": "integer", "maximum": 10 ** 40}, "p.maximum"),
    ({"type": ["integer", "null"], "minimum": 0}, "p.minimum"),
    ({"type": "string", "format": "uri"}, "p.format"),
    ({"type": "object", "properties": {"a": {"type": "string", "format": "duration"}}},
     "p.properties.a.format"),
    ({"type": "array", "prefixItems": [{"type": "string"}], "items": {"type": "integer"}},
     "p.items"),
    ({"type": "array", "prefixItems": [{"type": "string"}], "minItems": 2}, "p.minItems"),
    ({"not": {"type": "string"}}, "p.not"),
    ({"allOf": [{"type": "string"}]}, "p.allOf"),
    ({"type": "object", "properties": {"a": {"type": "string"}}, "minProperties": 1},
     "p.minProperties"),
    ({"type": "array", "items": {"type": "string"}, "uniqueItems": True}, "p.uniqueItems"),
    ({"type": ["string", "null"], "maxLength": 3}, "p.maxLength"),
    ({"type": "string", "pattern": "^a+$", "maxLength": 3}, "p.maxLength"),
    ({"anyOf": [{"type": "string"}], "maxLength": 3}, "p.maxLength"),
    ({"anyOf": [{"type": "string"}], "properties": {}}, "p.properties"),
    ({"anyOf": [{"type": "string"}, {"type": "number", "minimum": 0.5}]},
     "p.anyOf[1].minimum"),
    ({"type": "object", "required": ["a"]}, "p.required"),
    ({"type": "object", "required": ["x"], "properties": {}}, "p.required"),
    ({"type": "object", "properties": {"a": {"type": "thing"}}}, "p.properties.a.type"),
    ({"type": "strings"}, "p.type"),
    ({"type": "string", "pattern": "^x(?=a)$"}, "p.pattern"),  # lookahead
    ({"type": "string", "pattern": "^(a)\\1$"}, "p.pattern"),  # back-reference
    ({"type": "string", "pattern": "^\\bx$"}, "p.pattern"),  # word boundary
    ({"type": "string", "pattern": "^a^b$"}, "p.pattern"),  # ^ inside
    ({"type": "string", "pattern": "^[a-$"}, "p.pattern"),  # unbalanced
    ({"type": "string", "pattern": "^(ab$"}, "p.pattern"),
    ({"type": "string", "pattern": "^a{3,1}$"}, "p.pattern"),
    ({"type": "string", "pattern": "^[z-a]$"}, "p.pattern"),
    ({"type": "string", "pattern": "^*$"}, "p.pattern"),
    ({"type": "string", "pattern": "^" + "(" * 400 + ")" * 400 + "$"}, "p.pattern"),
    ({"type": "string", "pattern": "^a{2001}$"}, "p.pattern"),  # llama.cpp refuses it
    # not a schema jsonschema reads (it validates the answer): refused now
    ({"type": "object", "properties": {"a": {"type": "string"}}, "required": ["a", "a"]},
     "p.required"),
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
        grammar({"type": "object", "properties": {"a": {"type": "number", "maximum": 9.5}}})
    assert caught.value.path == f"{WHERE}.properties.a.maximum"
    assert "`maximum`" in caught.value.message


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


# --- within a budget -------------------------------------------------------------------
# Each hostile schema of issue 27 is refused at once, naming the keyword and where it
# is; the deadline is generous (a busy CI machine) but far below what they cost before
# (a 940 MB grammar; 40 s for the oneOf overlap check).

QUICK_S = 5.0


def _refused(schema: Any, budget: GrammarBudget = DEFAULT_BUDGET) -> UnsupportedSchema:
    started = time.monotonic()
    with pytest.raises(UnsupportedSchema) as caught:
        response_format_grammar(_fmt(schema), WHERE, budget)
    assert time.monotonic() - started < QUICK_S
    return caught.value


def _deep(levels: int) -> dict[str, Any]:
    schema: dict[str, Any] = {"type": "string"}
    for _ in range(levels):
        schema = {"type": "object", "properties": {"a": schema}}
    return schema


@pytest.mark.parametrize(("schema", "path", "words"), [
    ({"type": "string", "minLength": 100_000_000}, ".minLength", "over the limit of 4096"),
    ({"type": "string", "maxLength": 30_000}, ".maxLength", "over the limit"),
    ({"type": "array", "items": {"type": "integer"}, "maxItems": 10_000_000}, ".maxItems",
     "over the limit"),
    ({"type": "array", "items": {"type": "integer"}, "minItems": 10_000_000}, ".minItems",
     "over the limit"),
    ({"enum": [f"v{i}" for i in range(100_000)]}, ".enum", "100000 entries"),
    ({"oneOf": [{"const": i} for i in range(3_000)]}, ".oneOf", "3000 entries"),
    ({"anyOf": [{"const": i} for i in range(3_000)]}, ".anyOf", "3000 entries"),
    (_deep(5_000), ".properties.a" * 16 + ".type", "nested deeper than 32 levels"),
    ({"type": "string", "pattern": "^a{100000000}$"}, ".pattern", "more than 4096"),
    ({"type": "string", "pattern": "^a{0,30000}$"}, ".pattern", "more than 4096"),
    ({"type": "string", "pattern": "^a{0,2000}$"}, ".pattern", "by at most 1000"),
    ({"type": "string", "minLength": 5, "maxLength": 2}, ".maxLength", "below minLength"),
    ({"type": "string", "maxLength": "9"}, ".maxLength", "non-negative integer"),
])
def test_hostile_schemas_are_refused_quickly_naming_keyword_and_path(
    schema: dict[str, Any], path: str, words: str
) -> None:
    refused = _refused(schema)
    assert refused.path == WHERE + path
    assert words in refused.message


def test_a_long_pattern_is_refused_and_wide_classes_within_the_limit_are_quick() -> None:
    with pytest.raises(UnsupportedSchema, match="over the limit of 1000"):
        schema_grammar({"type": "string", "pattern": "^" + "a" * 1000 + "$"}, "p")
    widest = "^" + "[\\x00-\\uffff]" * 70 + "$"
    started = time.process_time()
    schema_grammar({"type": "string", "pattern": widest}, "p")
    # CPU time, not wall time: 0.1 s a class before (a walk over the whole range)
    assert time.process_time() - started < 3


def test_nesting_is_refused_without_recursing_through_it() -> None:
    with pytest.raises(UnsupportedSchema, match="nested deeper than 32 levels"):
        schema_grammar(_deep(100_000), "p")


def test_a_long_optional_span_is_refused_before_llama_cpp_would_refuse_it() -> None:
    """Between minLength and maxLength the converter nests one optional group per
    character; llama.cpp refuses more than 1,000 and crashed (SIGSEGV) at 30,000."""
    refused = _refused({"type": "string", "minLength": 100, "maxLength": 1200})
    assert refused.path == f"{WHERE}.maxLength"
    assert "1100, over the limit of 1000" in refused.message


def test_lengths_within_budget_become_grammars_llama_cpp_accepts(vocab_llm: Llama) -> None:
    for schema in ({"type": "string", "maxLength": OPTIONAL_SPAN},
                   {"type": "string", "minLength": 4000, "maxLength": 4096},
                   {"type": "array", "items": {"type": "integer"}, "minItems": 3000,
                    "maxItems": 4000},
                   {"type": "string", "pattern": "^[a-z]{2,1000}$"}):
        assert parses(vocab_llm, grammar(schema)), schema


def test_a_reference_bomb_stops_at_the_schema_size_budget() -> None:
    """Each definition uses the one before twice: 512 copies of a 300-character
    description once inlined (and a nesting deep enough for many more)."""
    defs = {"d0": {"type": "string", "description": "x" * 300}}
    for i in range(1, 10):
        defs[f"d{i}"] = {"type": "object", "properties": {
            "a": {"$ref": f"#/$defs/d{i - 1}"}, "b": {"$ref": f"#/$defs/d{i - 1}"}}}
    refused = _refused({"$ref": "#/$defs/d9", "$defs": defs})
    assert "larger than 100000 characters" in refused.message


def test_a_smaller_budget_is_the_callers_choice() -> None:
    small = GrammarBudget(max_length=64, max_enum=3, max_branches=2, max_schema_chars=200,
                          max_grammar_chars=2_000)
    assert _refused({"type": "string", "maxLength": 65}, small).path == f"{WHERE}.maxLength"
    assert _refused({"enum": [1, 2, 3, 4]}, small).path == f"{WHERE}.enum"
    assert _refused({"anyOf": [{"type": "string"}] * 3}, small).path == f"{WHERE}.anyOf"
    assert "larger than 200" in _refused({"const": "x" * 300}, small).message
    too_big = _refused({"enum": ["y" * 60] * 3}, GrammarBudget(max_grammar_chars=100))
    assert too_big.path == WHERE and "over the limit of 100" in too_big.message


def test_a_large_legal_oneof_is_checked_in_near_linear_time() -> None:
    """The overlap check used to compare every pair of branches (3,000 const branches:
    40 s); values and types are indexed now, and a clash is still found."""
    budget = GrammarBudget(max_branches=3_001, max_schema_chars=10**6,
                           max_grammar_chars=10**6)
    branches = [{"const": i} for i in range(3_000)]
    started = time.monotonic()
    assert check_schema({"oneOf": branches}, "p", budget)
    assert time.monotonic() - started < QUICK_S
    with pytest.raises(UnsupportedSchema) as caught:
        check_schema({"oneOf": [*branches, {"enum": ["a", 2_999]}]}, "p", budget)
    assert caught.value.path == "p.oneOf[3000]"
    assert "branches 2999 and 3000" in str(caught.value)


def test_tagged_unions_are_still_told_apart_by_their_discriminator() -> None:
    branches = [{"type": "object", "properties": {"kind": {"const": f"k{i}"},
                                                  "n": {"type": "integer"}},
                 "required": ["kind", "n"]} for i in range(200)]
    assert check_schema({"oneOf": branches}, "p")
    clash = [*branches, {"type": "object", "properties": {"kind": {"enum": ["x", "k7"]}},
                         "required": ["kind"]}]
    with pytest.raises(UnsupportedSchema, match="branches 7 and 200"):
        check_schema({"oneOf": clash}, "p")


def test_grammar_problem_names_size_and_nesting() -> None:
    assert grammar_problem('root ::= "a"') is None
    assert grammar_problem('root ::= "((((" [(]') is None  # literals and classes
    nested = "root ::= " + "(" * (MAX_GRAMMAR_NESTING + 1) + '"a"' + ")" * (
        MAX_GRAMMAR_NESTING + 1)
    assert "nests groups 2001 deep" in (grammar_problem(nested) or "")
    assert "over the limit of 10" in (
        grammar_problem('root ::= "abcdefghijkl"', GrammarBudget(max_grammar_chars=10)) or "")


TREE = {"$defs": {"Node": {"type": "object", "required": ["v"], "properties": {
    "v": {"type": "integer"},
    "kids": {"type": "array", "items": {"$ref": "#/$defs/Node"}}}}},
    "$ref": "#/$defs/Node"}


def test_a_recursive_ref_is_expanded_three_levels_deep(vocab_llm: Llama) -> None:
    gbnf = grammar(TREE)
    three = '{"v": 1, "kids": [{"v": 2, "kids": [{"v": 3, "kids": []}]}]}'
    four = '{"v": 1, "kids": [{"v": 2, "kids": [{"v": 3, "kids": [{"v": 4}]}]}]}'
    assert accepts(vocab_llm, gbnf, three)
    assert not accepts(vocab_llm, gbnf, four)


def test_a_recursive_ref_each_level_requires_is_refused_naming_the_ref() -> None:
    chain = {"$defs": {"C": {"type": "object", "required": ["next"],
                             "properties": {"next": {"$ref": "#/$defs/C"}}}},
             "$ref": "#/$defs/C"}
    with pytest.raises(UnsupportedSchema) as refused:
        grammar(chain)
    assert refused.value.path.endswith(".properties.next.$ref")
    assert "recursive $ref" in refused.value.message
