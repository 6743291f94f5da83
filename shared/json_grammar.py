"""JSON Schema to a llama.cpp GBNF grammar, refusing what a grammar cannot enforce.

The one schema-to-grammar module: ``response_format`` (:func:`response_format_grammar`)
and forced tool calls (``shared.tools``) both go through :func:`schema_grammar`.

llama-cpp-python's converter (``json_schema_to_gbnf``) silently ignores the
keywords it does not know (``minimum``, ``not``, ``uniqueItems``...), and reads
only one branch of keywords per node, so output sampled under its grammar may
still fail the schema. chatq fails closed instead: :func:`check_schema` walks
the schema first and raises :class:`UnsupportedSchema` naming the first keyword
(and where it is: ``path`` is the caller's parameter, e.g.
``response_format.json_schema.schema.properties.n.minimum`` or
``tools[0].function.parameters.properties.n.minimum``) that the grammar would
not enforce. What passes the check, the grammar enforces: every value it admits
is JSON that validates (unless ``max_tokens`` cuts it short).

What must always hold, and why:

- Annotations (``title``, ``description``, ``default``, ``examples``...) are
  dropped before conversion: they constrain nothing, and the converter would
  refuse a node holding only annotations (pydantic's ``Any`` field).
- ``oneOf`` is read by the converter as ``anyOf``: it passes only when no value
  can match two branches (:func:`_check_one_of`).
- Local ``$ref`` s (``#/$defs/...``, ``#/definitions/...``) are inlined first
  (:func:`inline_refs`); a recursive one down to :data:`RECURSION` levels (below
  that, an optional property, a list's items or an ``anyOf`` branch that would need
  it again is left out; a required one refuses the schema, naming the ``$ref``);
  a remote one is refused.
- What the converter ignores, chatq writes itself (:mod:`shared.gbnf`, tried first
  at every node by :func:`_converter`): integer bounds of any range and sign,
  exclusive or not; number bounds that are whole numbers (a decimal bound is
  refused by name); ``multipleOf`` on integers (listed between two bounds, or by
  the last two digits when it divides 100); the ``email``, ``date``, ``time`` and
  ``date-time`` formats; and ``pattern``
  in the ECMA-262 subset :func:`shared.gbnf.pattern_rule` reads, written so that a
  ``"``, ``\\`` or control character is always escaped inside the JSON string.
- Where the grammar is narrower than the schema's wording (``date`` admits
  2024-02-31), the worker validates the finished answer against the whole
  schema (:mod:`shared.answers`): a mismatch fails the job naming the keyword.
- The converter's string character admits raw control characters (a raw
  newline), which JSON parsers refuse: :func:`_strict_strings` tightens it.

Within a budget (:class:`GrammarBudget`), because one request must not take the
service down: a schema of a few hundred bytes (``"minLength": 100000000``) once
became a 940 MB grammar, and 3,000 ``oneOf`` branches held the API's event loop
for 40 s. So, before any expensive work:

- The schema's size (every name and value, counted while ``$ref`` s are inlined,
  so a reference bomb stops early), its nesting depth, ``enum`` values and
  ``anyOf``/``oneOf``/``prefixItems`` branches are capped; a refusal names the
  keyword and where it is, like every other refusal.
- ``minLength``/``maxLength``/``minItems``/``maxItems`` (and a pattern's ``{m,n}``)
  are at most ``max_length``: the converter spells repetitions out. The span
  between a minimum and a maximum is at most :data:`OPTIONAL_SPAN`, because the
  converter writes it as nested optional groups ``(x (x ...)?)?``: llama.cpp's
  grammar parser refuses more than 1,000 of them (its ``MAX_REPETITION_THRESHOLD``)
  and, being recursive, overflows its stack (SIGSEGV, the whole worker) at some
  tens of thousands (measured: 30,000 crashes, 16,000 is refused).
- The ``oneOf`` overlap check is linear in the branches for values and types; only
  object branches told apart by a discriminator are compared pairwise, and there
  are at most ``max_branches`` of them.
- The produced grammar's size and group nesting are checked (:func:`grammar_problem`),
  here and again by the worker before llama.cpp parses it, so no grammar that
  could crash a worker reaches llama.cpp.
"""

from __future__ import annotations

import json
import math
import re
from dataclasses import dataclass
from typing import Any

from shared.gbnf import (
    FORMATS,
    Bound,
    RuleError,
    integer_multiples,
    integer_range,
    number_range,
    pattern_rule,
)
from shared.schemas import ResponseFormat

# The numeric keywords (integer and number bounds, multipleOf): shared.gbnf's ranges.
NUMERIC = ("minimum", "maximum", "exclusiveMinimum", "exclusiveMaximum", "multipleOf")

# Keywords the converter turns into grammar rules, exactly.
_ENFORCED = frozenset({
    "type", "properties", "required", "additionalProperties", "items", "prefixItems",
    "minItems", "maxItems", "enum", "const", "anyOf", "oneOf", "pattern", "format",
    "minLength", "maxLength", *NUMERIC,
})
# Keywords that constrain nothing (dropped before conversion).
_ANNOTATIONS = frozenset({
    "title", "description", "default", "examples", "$schema", "$id", "$comment",
    "deprecated", "readOnly", "writeOnly", "$defs", "definitions", "strict",
    "discriminator",  # OpenAPI's hint; the branches' own consts tell them apart
})
# String formats with a grammar (the converter's uuids, and shared.gbnf.FORMATS).
_FORMATS = frozenset({"date", "time", "date-time", "uuid", "uuid1", "uuid2", "uuid3",
                      "uuid4", "uuid5", "email"})
_TYPES = frozenset({"object", "array", "string", "number", "integer", "boolean", "null"})
_DEFS = ("$defs", "definitions")
_LENGTHS = ("minLength", "maxLength", "minItems", "maxItems")
_LISTS = ("anyOf", "oneOf", "prefixItems")

# The most repetitions between a minimum and a maximum (nested optional groups in the
# converter's grammar): llama.cpp refuses more than 1,000 (MAX_REPETITION_THRESHOLD 2000
# over a group and its `?`).
OPTIONAL_SPAN = 1000
# The deepest group nesting a grammar may have: llama.cpp's recursive parser overflows
# an 8 MB thread stack between 16,000 and 30,000 levels; a schema within budget needs
# about OPTIONAL_SPAN.
MAX_GRAMMAR_NESTING = 2 * OPTIONAL_SPAN


@dataclass(frozen=True)
class GrammarBudget:
    """How large a schema and its grammar may be. The defaults are the ceilings the
    worker enforces too; a caller may pass smaller ones (e.g. ``max_length`` no more
    than the model's context can hold)."""

    max_length: int = 4096  # minLength / maxLength / minItems / maxItems, a pattern's {m,n}
    max_enum: int = 1000  # values of one enum
    max_branches: int = 256  # anyOf / oneOf / prefixItems entries (a forced call: 1 per tool)
    max_depth: int = 32  # nesting, counted in JSON levels (properties.a is two)
    max_schema_chars: int = 100_000  # every name and value, after $ref inlining
    max_pattern_chars: int = 1000  # one pattern (Python's re, which checks answers, is slow
    # to compile long ones: 500 wide classes took 3 s)
    max_grammar_chars: int = 1_000_000  # the produced GBNF


DEFAULT_BUDGET = GrammarBudget()


class UnsupportedSchema(ValueError):
    """A schema construct a grammar cannot enforce; ``path`` is where it is."""

    def __init__(self, path: str, message: str) -> None:
        super().__init__(f"{path}: {message}")
        self.path = path
        self.message = message


def _resolve(root: Any, ref: str, where: str) -> Any:
    if ref != "#" and not ref.startswith("#/"):
        raise UnsupportedSchema(where, f"$ref {ref!r}: only local references (#/...) "
                                       "are supported")
    target = root
    for part in filter(None, ref[2:].split("/")):
        if not isinstance(target, dict) or part not in target:
            raise UnsupportedSchema(where, f"$ref {ref!r} points to nothing")
        target = target[part]
    return target


class _Size:
    """Counts a schema's characters (names, strings, one per other value) as it is
    walked, refusing at the first one over the budget."""

    def __init__(self, budget: GrammarBudget) -> None:
        self.budget, self.chars = budget, 0

    def add(self, node: Any, where: str, depth: int) -> None:
        if depth > self.budget.max_depth:
            raise UnsupportedSchema(where, f"schema nested deeper than {self.budget.max_depth} "
                                           "levels (a recursive $ref?)")
        if isinstance(node, dict):
            _check_counts(node, where, self.budget)
            self.chars += sum(len(str(k)) for k in node) + 1
        else:
            self.chars += len(node) if isinstance(node, str) else 1
        if self.chars > self.budget.max_schema_chars:
            raise UnsupportedSchema(where, f"schema larger than {self.budget.max_schema_chars} "
                                           "characters (names and values, $refs inlined)")


def _check_counts(node: dict[str, Any], where: str, budget: GrammarBudget) -> None:
    """Refuse an over-long ``enum`` or branch list by its count, before its size."""
    for key, limit in (("enum", budget.max_enum), *((k, budget.max_branches) for k in _LISTS)):
        value = node.get(key)
        if isinstance(value, list) and len(value) > limit:
            raise UnsupportedSchema(f"{where}.{key}", f"{key} has {len(value)} entries, over "
                                                      f"the limit of {limit}")


def check_counts(schema: Any, path: str, budget: GrammarBudget = DEFAULT_BUDGET) -> None:
    """Refuse an over-long ``enum`` or branch list anywhere in ``schema``, naming it (a
    schema too large is often so because of one such list: the error names the keyword)."""
    todo: list[tuple[Any, str]] = [(schema, path)]
    while todo:
        node, where = todo.pop()
        if isinstance(node, dict):
            _check_counts(node, where, budget)
            todo.extend((v, f"{where}.{k}") for k, v in node.items())
        elif isinstance(node, list):
            todo.extend((v, f"{where}[{i}]") for i, v in enumerate(node))


# A recursive $ref is expanded at most this many times inside itself; below that, what
# would need it again is left out (an optional property, a list's items, an anyOf branch)
# or, when required, the schema is refused naming the $ref.
RECURSION = 3
_NOTHING: Any = object()  # a schema cut off below RECURSION: no value matches it


def inline_refs(schema: Any, path: str, budget: GrammarBudget = DEFAULT_BUDGET) -> Any:
    """The schema with every local ``$ref`` replaced by what it points to; a recursive
    one down to :data:`RECURSION` levels (a tree three levels deep), pruned below."""
    size = _Size(budget)
    active: list[str] = []  # the references being expanded, outermost first
    cuts: list[str] = []  # where a recursive reference was cut off

    def walk(node: Any, where: str, depth: int) -> Any:
        size.add(node, where, depth)
        if isinstance(node, list):
            return [walk(item, f"{where}[{i}]", depth + 1) for i, item in enumerate(node)]
        if not isinstance(node, dict):
            return node
        if "$ref" in node:
            ref = str(node["$ref"])
            if active.count(ref) >= RECURSION:
                cuts.append(f"{where}.$ref")
                return _NOTHING
            target = _resolve(schema, ref, f"{where}.$ref")
            rest = {k: v for k, v in node.items() if k != "$ref"}
            active.append(ref)
            try:
                return walk({**target, **rest}, where, depth + 1)
            finally:
                active.pop()
        return _prune({k: v if k in _DEFS else walk(v, f"{where}.{k}", depth + 1)
                       for k, v in node.items()})

    inlined = walk(schema, path, 0)
    if inlined is _NOTHING:
        raise UnsupportedSchema(cuts[0], f"a recursive $ref admits no value within "
                                         f"{RECURSION} levels (each level requires the next)")
    if isinstance(inlined, dict):
        inlined = {k: v for k, v in inlined.items() if k not in _DEFS}
    return inlined


def _has_nothing(value: Any) -> bool:
    if isinstance(value, list):
        return any(v is _NOTHING for v in value)
    if isinstance(value, dict):
        return any(v is _NOTHING for v in value.values())
    return value is _NOTHING


def _prune(node: dict[str, Any]) -> Any:
    """``node`` without the parts cut off below :data:`RECURSION`: an array that may be
    empty stays empty, an optional property or an ``anyOf`` branch is left out,
    ``additionalProperties`` admits none; anything else cut makes ``node`` itself cut."""
    if not any(_has_nothing(v) for v in node.values()):
        return node
    out = dict(node)
    if out.get("items") is _NOTHING:
        if out.get("minItems", 0) > 0:
            return _NOTHING
        out["items"], out["maxItems"] = {"type": "null"}, 0
    if out.get("additionalProperties") is _NOTHING:
        out["additionalProperties"] = False
    props = out.get("properties")
    if isinstance(props, dict) and _has_nothing(props):
        if any(props.get(name) is _NOTHING for name in out.get("required") or []):
            return _NOTHING
        out["properties"] = {k: v for k, v in props.items() if v is not _NOTHING}
    for key in ("anyOf", "oneOf"):
        if isinstance(out.get(key), list) and _has_nothing(out[key]):
            out[key] = [b for b in out[key] if b is not _NOTHING]
            if not out[key]:
                return _NOTHING
    return _NOTHING if any(_has_nothing(v) for v in out.values()) else out


def measure_schema(schema: Any, path: str, budget: GrammarBudget = DEFAULT_BUDGET) -> None:
    """Refuse a schema over the budget's size or depth (without recursion: a hostile
    schema may be nested far deeper than Python's stack)."""
    size = _Size(budget)
    todo: list[tuple[Any, str, int]] = [(schema, path, 0)]
    while todo:
        node, where, depth = todo.pop()
        size.add(node, where, depth)
        if isinstance(node, dict):
            todo.extend((v, f"{where}.{k}", depth + 1) for k, v in node.items())
        elif isinstance(node, list):
            todo.extend((v, f"{where}[{i}]", depth + 1) for i, v in enumerate(node))


def check_schema(schema: Any, path: str, budget: GrammarBudget = DEFAULT_BUDGET) -> Any:
    """The schema as the converter will get it (annotations dropped); raise
    :class:`UnsupportedSchema` at the first construct the grammar would not enforce
    or the budget does not allow (``schema`` already has its references inlined)."""
    measure_schema(schema, path, budget)
    return _check(schema, path, budget)


def _check(schema: Any, path: str, budget: GrammarBudget) -> Any:
    if isinstance(schema, bool):
        if schema:
            return _any_value()
        raise UnsupportedSchema(path, "the schema `false` admits nothing")
    if not isinstance(schema, dict):
        raise UnsupportedSchema(path, "a schema must be a JSON object")
    for key in schema:
        if key not in _ANNOTATIONS and key not in _ENFORCED:
            raise UnsupportedSchema(f"{path}.{key}",
                                    f"JSON Schema keyword `{key}` cannot be enforced by "
                                    "chatq's grammar")
    clean = {key: _check_keyword(key, value, f"{path}.{key}", schema, budget)
             for key, value in schema.items() if key not in _ANNOTATIONS}
    used = _used(clean)
    for key in clean:
        if key not in used:
            raise UnsupportedSchema(f"{path}.{key}",
                                    f"`{key}` cannot be enforced alongside "
                                    f"{' / '.join(sorted(used & clean.keys()))}")
    _check_span(clean, path)
    _check_prefix_items(clean, path)
    numeric_rule(clean, path, budget)
    return clean or _any_value()


def _any_value() -> dict[str, Any]:
    """Any JSON value, as the converter reads it: its ``{}`` is any *object*, and it
    fails on ``items: {}`` (pydantic's ``list[Any]``)."""
    return {"type": ["object", "array", "string", "number", "boolean", "null"]}


# The converter's branches in the order it tries them: (applies to the schema, the
# keywords that branch reads). Whatever else a schema holds, the converter ignores.
_BRANCHES: list[tuple[Any, frozenset[str]]] = [
    (lambda s, t: "oneOf" in s, frozenset({"oneOf"})),
    (lambda s, t: "anyOf" in s, frozenset({"anyOf"})),
    (lambda s, t: isinstance(t, list), frozenset({"type"})),
    (lambda s, t: "const" in s, frozenset({"const", "type"})),
    (lambda s, t: "enum" in s, frozenset({"enum", "type"})),
    (lambda s, t: t in (None, "object") and ("properties" in s or "additionalProperties" in s),
     frozenset({"type", "properties", "required", "additionalProperties"})),
    (lambda s, t: t in (None, "array") and "prefixItems" in s,
     frozenset({"type", "prefixItems", "items", "minItems", "maxItems"})),
    (lambda s, t: t in (None, "array") and "items" in s,
     frozenset({"type", "items", "minItems", "maxItems"})),
    (lambda s, t: t in (None, "string") and "pattern" in s, frozenset({"type", "pattern"})),
    (lambda s, t: t in (None, "string") and "format" in s, frozenset({"type", "format"})),
    (lambda s, t: t == "string", frozenset({"type", "minLength", "maxLength"})),
    (lambda s, t: t in ("integer", "number"), frozenset({"type", *NUMERIC})),
]


def _used(schema: dict[str, Any]) -> frozenset[str]:
    """The keywords the converter's branch for this schema reads (it ignores the rest)."""
    kind = schema.get("type")
    return next((used for applies, used in _BRANCHES if applies(schema, kind)),
                frozenset({"type"}))


def _check_keyword(key: str, value: Any, path: str, node: dict[str, Any],
                   budget: GrammarBudget) -> Any:
    """``value`` as the converter will get it, or :class:`UnsupportedSchema`."""
    if key == "properties":
        if not isinstance(value, dict):
            raise UnsupportedSchema(path, "properties must be an object")
        return {name: _check(sub, f"{path}.{name}", budget) for name, sub in value.items()}
    if key in _LISTS:
        return _check_list(key, value, path, budget)
    if key == "items" and value is False and "prefixItems" in node:
        return value  # no items past the prefix: what the grammar writes anyway
    if key == "items" or (key == "additionalProperties" and not isinstance(value, bool)):
        return _check(value, path, budget)
    if key in _LENGTHS:
        _check_length(key, value, path, budget)
    elif key in NUMERIC:
        _check_number(key, value, path)
    elif key == "enum":
        _check_enum(value, path)
    elif key == "pattern":
        _check_pattern(value, path, budget)
    else:
        _check_plain(key, value, path, node)
    return value


def _check_plain(key: str, value: Any, path: str, node: dict[str, Any]) -> None:
    if key == "type":
        names = value if isinstance(value, list) else [value]
        unknown = [n for n in names if n not in _TYPES]
        if unknown or not names:
            raise UnsupportedSchema(path, f"unknown type {unknown or value!r}")
    elif key == "format" and value not in _FORMATS:
        raise UnsupportedSchema(path, f"format {value!r} cannot be enforced (supported: "
                                      f"{', '.join(sorted(_FORMATS))})")
    elif key == "required":
        _check_required(value, path, node)


def _check_length(key: str, value: Any, path: str, budget: GrammarBudget) -> None:
    """The converter spells a length out (``char char ...``): it must be small."""
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise UnsupportedSchema(path, f"{key} must be a non-negative integer")
    if value > budget.max_length:
        raise UnsupportedSchema(path, f"{key} {value} is over the limit of {budget.max_length}")


def _check_span(schema: dict[str, Any], path: str) -> None:
    """Between a minimum and a maximum, the converter nests one optional group per
    repetition: at most :data:`OPTIONAL_SPAN` of them."""
    for low_key, high_key in (("minLength", "maxLength"), ("minItems", "maxItems")):
        if high_key not in schema:
            continue
        low, high = schema.get(low_key, 0), schema[high_key]
        if high < low:
            raise UnsupportedSchema(f"{path}.{high_key}", f"{high_key} is below {low_key}")
        if high - low > OPTIONAL_SPAN:
            raise UnsupportedSchema(f"{path}.{high_key}", (
                f"{high_key} - {low_key} is {high - low}, over the limit of {OPTIONAL_SPAN} "
                "(llama.cpp's grammar parser refuses more optional repetitions)"))


def _check_prefix_items(schema: dict[str, Any], path: str) -> None:
    """The grammar writes exactly one item per ``prefixItems`` entry: ``minItems`` and
    ``maxItems`` must allow that many, and further items only as ``items: false``."""
    prefix = schema.get("prefixItems")
    if prefix is None:
        return
    if "items" in schema and schema["items"] is not False:
        raise UnsupportedSchema(f"{path}.items", "items after prefixItems cannot be "
                                                 "enforced (only items: false)")
    if schema.get("minItems", 0) > len(prefix):
        raise UnsupportedSchema(f"{path}.minItems", "minItems over the number of "
                                                    "prefixItems cannot be enforced")
    if schema.get("maxItems", len(prefix)) < len(prefix):
        raise UnsupportedSchema(f"{path}.maxItems", "maxItems under the number of "
                                                    "prefixItems cannot be enforced")


def _check_number(key: str, value: Any, path: str) -> None:
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise UnsupportedSchema(path, f"{key} must be a number")


# --- integer and number bounds ------------------------------------------------------------


def _integer_bounds(schema: dict[str, Any]) -> tuple[int | None, int | None]:
    """The inclusive integer bounds the schema's keywords set (None: unbounded)."""
    lows = [math.ceil(schema["minimum"])] if "minimum" in schema else []
    lows += [math.floor(schema["exclusiveMinimum"]) + 1] if "exclusiveMinimum" in schema else []
    highs = [math.floor(schema["maximum"])] if "maximum" in schema else []
    highs += [math.ceil(schema["exclusiveMaximum"]) - 1] if "exclusiveMaximum" in schema else []
    return max(lows, default=None), min(highs, default=None)


def _number_bound(schema: dict[str, Any], path: str, keys: tuple[str, str]) -> Bound | None:
    """The tighter of an inclusive and an exclusive bound, each a whole number (a
    decimal bound would need arithmetic a grammar cannot do: refused by name)."""
    found = []
    for key, is_open in zip(keys, (False, True), strict=True):
        if key not in schema:
            continue
        value = schema[key]
        if not float(value).is_integer():
            raise UnsupportedSchema(f"{path}.{key}", (
                f"JSON Schema keyword `{key}` {value} cannot be enforced by chatq's grammar "
                "on a number: number bounds are enforced when they are whole numbers "
                "(use an integer, or a whole-number bound)"))
        found.append(Bound(int(value), is_open))
    upper = keys[0] == "maximum"  # the tighter bound: the lowest maximum, highest minimum
    return max(found, key=lambda b: ((-b.value if upper else b.value), b.open), default=None)


def numeric_rule(schema: dict[str, Any], path: str, budget: GrammarBudget) -> str | None:
    """The GBNF rule body of an integer or number with bounds or ``multipleOf`` (None:
    neither, the converter's own rule applies), or :class:`UnsupportedSchema` naming
    the keyword that cannot be enforced."""
    kind = schema.get("type")
    if kind not in ("integer", "number") or not any(k in schema for k in NUMERIC):
        return None
    try:
        if kind == "integer":
            low, high = _integer_bounds(schema)
            if "multipleOf" in schema:
                step = schema["multipleOf"]
                if not float(step).is_integer():
                    raise RuleError("a fractional multipleOf on an integer")
                return integer_multiples(int(step), low, high, budget.max_enum) + " space"
            return integer_range(low, high) + " space"
        if "multipleOf" in schema:
            raise UnsupportedSchema(f"{path}.multipleOf", (
                "JSON Schema keyword `multipleOf` cannot be enforced by chatq's grammar on "
                "a number (it is on an integer)"))
        return number_range(_number_bound(schema, path, ("minimum", "exclusiveMinimum")),
                            _number_bound(schema, path, ("maximum", "exclusiveMaximum"))
                            ) + " space"
    except RuleError as exc:
        key = next(k for k in reversed(NUMERIC) if k in schema)
        raise UnsupportedSchema(f"{path}.{key}", f"`{key}` cannot be enforced: {exc}") from exc


def _check_enum(value: Any, path: str) -> None:
    if not isinstance(value, list) or not value:
        raise UnsupportedSchema(path, "enum must be a non-empty list")


def _check_required(value: Any, path: str, node: dict[str, Any]) -> None:
    """The converter only writes the properties it knows: a required name missing from
    ``properties`` would never be produced."""
    if not isinstance(value, list) or not all(isinstance(name, str) for name in value):
        raise UnsupportedSchema(path, "required must be a list of property names")
    properties = node.get("properties")
    if not isinstance(properties, dict):
        return  # refused as unused (required without properties) by check_schema
    missing = [name for name in value if name not in properties]
    if missing:
        raise UnsupportedSchema(path, f"required names {missing[0]!r}, which is not in "
                                      "properties")


def _check_list(key: str, value: Any, path: str, budget: GrammarBudget) -> list[Any]:
    """``anyOf``/``oneOf``/``prefixItems`` (their count is checked with the size)."""
    if not isinstance(value, list) or not value:
        raise UnsupportedSchema(path, f"{key} must be a non-empty list")
    checked = [_check(sub, f"{path}[{i}]", budget) for i, sub in enumerate(value)]
    return _check_one_of(checked, path) if key == "oneOf" else checked


# --- oneOf ---------------------------------------------------------------------------

# The JSON types a schema's own keywords imply (a branch without `type`).
_IMPLIED = [({"properties", "additionalProperties"}, "object"), ({"items", "prefixItems"}, "array"),
            ({"pattern", "format", "minLength", "maxLength"}, "string")]


def _check_one_of(branches: list[Any], path: str) -> list[Any]:
    """The converter reads ``oneOf`` as ``anyOf``: that enforces "exactly one" only when
    no value can match two branches. Refused unless the branches are told apart by
    their types, their ``const``/``enum`` values, or a required property whose
    values differ (a discriminator, as pydantic writes tagged unions)."""
    seen = _Seen()
    for j, branch in enumerate(map(_Branch.of, branches)):
        i = seen.clash(branch)
        if i is not None:
            raise UnsupportedSchema(f"{path}[{j}]", f"oneOf branches {i} and {j} can "
                                    "match the same value, and the grammar cannot "
                                    "enforce exactly one; use anyOf")
        seen.add(j, branch)
    return branches


@dataclass(frozen=True)
class _Branch:
    """What tells a (checked) ``oneOf`` branch apart, computed once."""

    types: frozenset[str]
    values: frozenset[str] | None  # its const/enum values, as JSON
    tags: dict[str, frozenset[str] | None]  # required property -> its const/enum values

    @classmethod
    def of(cls, schema: dict[str, Any]) -> _Branch:
        props = schema.get("properties", {})
        values = _values(schema)
        return cls(types=frozenset(_types(schema)),
                   values=None if values is None else frozenset(values),
                   tags={k: _frozen(_values(props.get(k))) for k in schema.get("required", [])})

    def apart(self, other: _Branch) -> bool:
        """Told apart by a required property whose values differ (objects only)."""
        return any(mine is not None and theirs is not None and mine.isdisjoint(theirs)
                   for k, mine in self.tags.items()
                   for theirs in [other.tags.get(k)])


def _frozen(values: set[str] | None) -> frozenset[str] | None:
    return None if values is None else frozenset(values)


class _Seen:
    """The earlier branches, indexed so that a new branch is compared with each in
    about constant time: two branches with values clash when they share a value and
    a type; otherwise when they share a type other than ``object``, or share
    ``object`` and no discriminator tells them apart (the one pairwise comparison,
    over at most ``max_branches`` object branches)."""

    def __init__(self) -> None:
        self.branches: list[_Branch] = []
        self.by_value: dict[str, list[int]] = {}
        self.by_type: dict[str, int] = {}  # non-object type -> earliest branch
        self.by_type_plain: dict[str, int] = {}  # ... among branches without values
        self.objects: list[int] = []

    def clash(self, b: _Branch) -> int | None:
        """The earliest earlier branch that a value could match as well as ``b``."""
        found: list[int] = []
        if b.values is not None:
            found += [i for v in b.values for i in self.by_value.get(v, ())
                      if self.branches[i].types & b.types]
        lookup = self.by_type if b.values is None else self.by_type_plain
        found += [lookup[t] for t in b.types - {"object"} if t in lookup]
        if "object" in b.types:
            found += [i for i in self.objects if self._objects_clash(self.branches[i], b)]
        return min(found, default=None)

    @staticmethod
    def _objects_clash(a: _Branch, b: _Branch) -> bool:
        if a.values is not None and b.values is not None:
            return False  # compared by value
        return not a.apart(b)

    def add(self, j: int, b: _Branch) -> None:
        self.branches.append(b)
        for v in b.values or ():
            self.by_value.setdefault(v, []).append(j)
        for t in b.types - {"object"}:
            self.by_type.setdefault(t, j)
            if b.values is None:
                self.by_type_plain.setdefault(t, j)
        if "object" in b.types:
            self.objects.append(j)


def _types(schema: dict[str, Any]) -> set[str]:
    """The JSON types a (checked) schema admits: ``number`` includes ``integer``."""
    if "type" in schema:
        kind = schema["type"]
        types = set(kind if isinstance(kind, list) else [kind])
    elif "const" in schema or "enum" in schema:
        types = {_type_of(v) for v in _values(schema) or []}
    elif any(k in schema for k in ("anyOf", "oneOf")):
        types = set().union(*(_types(b) for b in schema.get("anyOf") or schema["oneOf"]))
    else:
        types = {kind for keys, kind in _IMPLIED if keys & schema.keys()} or set(_TYPES)
    return types | ({"integer"} if "number" in types else set())


def _type_of(value: Any) -> str:
    if isinstance(value, bool) or value is None:
        return "boolean" if isinstance(value, bool) else "null"
    if isinstance(value, int | float):
        return "integer" if isinstance(value, int) or value.is_integer() else "number"
    return "string" if isinstance(value, str) else "array" if isinstance(value, list) else "object"


def _values(schema: Any) -> set[str] | None:
    """The values a ``const``/``enum`` schema admits (as JSON), or None."""
    if not isinstance(schema, dict):
        return None
    if "const" in schema:
        return {json.dumps(schema["const"], sort_keys=True)}
    if "enum" in schema and isinstance(schema["enum"], list):
        return {json.dumps(v, sort_keys=True) for v in schema["enum"]}
    return None


# --- patterns ------------------------------------------------------------------------


def _check_pattern(pattern: Any, path: str, budget: GrammarBudget = DEFAULT_BUDGET) -> None:
    """A pattern in the subset :func:`shared.gbnf.pattern_rule` reads, its repetitions
    within the budget (the converter would spell them out like a length)."""
    if not isinstance(pattern, str) or not pattern:
        raise UnsupportedSchema(path, "a pattern must be a non-empty string")
    if len(pattern) > budget.max_pattern_chars:
        raise UnsupportedSchema(path, f"a pattern of {len(pattern)} characters, over the "
                                      f"limit of {budget.max_pattern_chars}")
    try:
        pattern_string(pattern, budget)
    except RuleError as exc:
        raise UnsupportedSchema(path, f"the pattern cannot be enforced: {exc}") from exc


def pattern_string(pattern: str, budget: GrammarBudget = DEFAULT_BUDGET) -> str:
    """The GBNF rule body of a JSON string matching ``pattern`` (or RuleError)."""

    def check_repeat(low: int, high: int | None) -> None:
        if max(low, high or 0) > budget.max_length:
            raise RuleError(f"a quantifier repeats more than {budget.max_length} times")
        if high is not None and not 0 <= high - low <= OPTIONAL_SPAN:
            raise RuleError(f"a quantifier's maximum must be at least its minimum, by at "
                            f"most {OPTIONAL_SPAN}")

    return '"\\"" ' + pattern_rule(pattern, check_repeat) + ' "\\"" space'


# --- grammars ------------------------------------------------------------------------


def _own_rule(schema: dict[str, Any], budget: GrammarBudget) -> str | None:
    """chatq's rule for a (checked) schema the converter would not enforce: bounds,
    ``multipleOf``, the email format, a pattern; None: the converter's own rule."""
    if any(k in schema for k in ("oneOf", "anyOf", "const", "enum")):
        return None
    kind = schema.get("type")
    if kind in (None, "string") and "pattern" in schema:
        return pattern_string(schema["pattern"], budget)
    if kind in (None, "string") and schema.get("format") in FORMATS:
        return f'"\\"" {FORMATS[schema["format"]]} "\\"" space'
    return numeric_rule(schema, "", budget)


def _converter(prop_order: list[str] | None, budget: GrammarBudget) -> Any:
    """llama-cpp-python's converter with :func:`_own_rule` tried first at every node."""
    from llama_cpp.llama_grammar import RESERVED_NAMES, SchemaConverter

    class Converter(SchemaConverter):
        def visit(self, schema: dict[str, Any], name: str) -> str:
            rule = _own_rule(schema, budget)
            if rule is None:
                return str(super().visit(schema, name))
            return str(self._add_rule(name + "-" if name in RESERVED_NAMES else name or "root",
                                      rule))

    order = {key: i for i, key in enumerate(prop_order or [])}
    return Converter(prop_order=order, allow_fetch=False, dotall=False, raw_pattern=False)


def _to_gbnf(schema: dict[str, Any], prop_order: list[str] | None,
             budget: GrammarBudget) -> str:
    converter = _converter(prop_order, budget)
    converter.visit(converter.resolve_refs(schema, "stdin"), "")
    return str(converter.format_grammar())


def _converts(schema: dict[str, Any], path: str, prop_order: list[str] | None = None,
              budget: GrammarBudget = DEFAULT_BUDGET) -> str:
    try:
        grammar = _to_gbnf(schema, prop_order, budget)
    except (ValueError, AssertionError, KeyError, TypeError, AttributeError,
            RecursionError) as exc:
        # e.g. a `pattern` with regex syntax the converter does not know
        raise UnsupportedSchema(path, f"cannot be turned into a grammar: {exc}") from exc
    problem = grammar_problem(grammar, budget)
    if problem:
        raise UnsupportedSchema(path, problem)
    return grammar


def schema_grammar(schema: dict[str, Any], path: str, prop_order: list[str] | None = None,
                   budget: GrammarBudget = DEFAULT_BUDGET) -> str:
    """The GBNF grammar (root rule ``root``) of a ref-inlined schema, checked first."""
    checked = check_schema(schema, path, budget)
    _check_meta(schema, path)
    return _strict_strings(_converts(checked, path, prop_order, budget), path)


def _check_meta(schema: dict[str, Any], path: str) -> None:
    """A schema ``jsonschema`` (which validates the answer, :mod:`shared.answers`) reads:
    refused now rather than failing every answer later."""
    from jsonschema import Draft202012Validator
    from jsonschema.exceptions import SchemaError

    try:
        Draft202012Validator.check_schema(schema)
    except SchemaError as exc:
        where = "".join(f"[{p}]" if isinstance(p, int) else f".{p}" for p in exc.path)
        raise UnsupportedSchema(f"{path}{where}", f"not a valid JSON Schema: "
                                                  f"{exc.message[:200]}") from exc


# Quoted literals and character classes, whose brackets are not groups.
_GBNF_LITERALS = re.compile(r'"(?:[^"\\]|\\.)*"|\[(?:[^\]\\]|\\.)*\]')


def grammar_problem(grammar: str, budget: GrammarBudget = DEFAULT_BUDGET) -> str | None:
    """Why llama.cpp must not be given this GBNF grammar (too large, or groups nested
    deep enough to overflow its recursive parser's stack), or None."""
    if len(grammar) > budget.max_grammar_chars:
        return (f"the grammar would be {len(grammar)} characters, over the limit of "
                f"{budget.max_grammar_chars}")
    depth = deepest = 0
    for match in re.finditer(r"[()]", _GBNF_LITERALS.sub("", grammar)):
        depth += 1 if match[0] == "(" else -1
        deepest = max(deepest, depth)
    if deepest > MAX_GRAMMAR_NESTING:
        return (f"the grammar nests groups {deepest} deep, over the limit of "
                f"{MAX_GRAMMAR_NESTING}")
    return None


# The converter's string character lets control characters through (a raw newline in
# a string), which JSON parsers refuse; JSON allows them only escaped.
_LAX_CHAR = r'char ::= [^"\\] |'
_STRICT_CHAR = r'char ::= [^"\\\x7F\x00-\x1F] |'


def _strict_strings(grammar: str, path: str) -> str:
    lines = grammar.splitlines()
    for i, line in enumerate(lines):
        if line.startswith("char ::="):
            if not line.startswith(_LAX_CHAR):
                raise UnsupportedSchema(path, "unexpected string rule from the grammar "
                                              "converter (a llama-cpp-python change?)")
            lines[i] = _STRICT_CHAR + line[len(_LAX_CHAR):]
    return "\n".join(lines)


def json_object_grammar() -> str:
    """llama.cpp's grammar of any JSON object (its strings already refuse raw control
    characters)."""
    from llama_cpp.llama_grammar import JSON_GBNF

    return str(JSON_GBNF)


def response_format_grammar(fmt: ResponseFormat | None, path: str,
                            budget: GrammarBudget = DEFAULT_BUDGET) -> str | None:
    """The grammar that enforces ``response_format`` (None: free text); a schema's
    refusals are named under ``path`` (``response_format.json_schema.schema``)."""
    if fmt is None or fmt.type == "text":
        return None
    if fmt.type == "json_object":
        return json_object_grammar()
    assert fmt.json_schema is not None  # checked by ResponseFormat
    return schema_grammar(inline_refs(fmt.json_schema.schema_, path, budget), path,
                          budget=budget)
