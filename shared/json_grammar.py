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
  (:func:`inline_refs`); a recursive or remote one is refused.
- A ``pattern`` is enforced only in the subset whose grammar stays inside a JSON
  string (:func:`_check_pattern`): the converter copies character classes and
  ``.`` into the grammar as they are, which would let ``"``, ``\\`` or a raw
  control character into the string and break the JSON.
- The converter's string character admits raw control characters (a raw
  newline), which JSON parsers refuse: :func:`_strict_strings` tightens it.
"""

from __future__ import annotations

import json
from typing import Any

from shared.schemas import ResponseFormat

# Keywords the converter turns into grammar rules, exactly.
_ENFORCED = frozenset({
    "type", "properties", "required", "additionalProperties", "items", "prefixItems",
    "minItems", "maxItems", "enum", "const", "anyOf", "oneOf", "pattern", "format",
    "minLength", "maxLength",
})
# Keywords that constrain nothing (dropped before conversion).
_ANNOTATIONS = frozenset({
    "title", "description", "default", "examples", "$schema", "$id", "$comment",
    "deprecated", "readOnly", "writeOnly", "$defs", "definitions", "strict",
    "discriminator",  # OpenAPI's hint; the branches' own consts tell them apart
})
# String formats the converter has a grammar for (others would be plain strings).
_FORMATS = frozenset({"date", "time", "date-time", "uuid", "uuid1", "uuid2", "uuid3",
                      "uuid4", "uuid5"})
_TYPES = frozenset({"object", "array", "string", "number", "integer", "boolean", "null"})
_MAX_DEPTH = 32
_DEFS = ("$defs", "definitions")


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


def inline_refs(schema: Any, path: str) -> Any:
    """The schema with every local ``$ref`` replaced by what it points to."""

    def walk(node: Any, where: str, depth: int) -> Any:
        if depth > _MAX_DEPTH:
            raise UnsupportedSchema(where, "schema nested too deep (a recursive $ref?)")
        if isinstance(node, list):
            return [walk(item, f"{where}[{i}]", depth + 1) for i, item in enumerate(node)]
        if not isinstance(node, dict):
            return node
        if "$ref" in node:
            target = _resolve(schema, str(node["$ref"]), f"{where}.$ref")
            rest = {k: v for k, v in node.items() if k != "$ref"}
            return walk({**target, **rest}, where, depth + 1)
        return {k: v if k in _DEFS else walk(v, f"{where}.{k}", depth + 1)
                for k, v in node.items()}

    inlined = walk(schema, path, 0)
    if isinstance(inlined, dict):
        inlined = {k: v for k, v in inlined.items() if k not in _DEFS}
    return inlined


def check_schema(schema: Any, path: str) -> Any:
    """The schema as the converter will get it (annotations dropped); raise
    :class:`UnsupportedSchema` at the first construct the grammar would not enforce
    (``schema`` already has its references inlined)."""
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
    clean = {key: _check_keyword(key, value, f"{path}.{key}", schema)
             for key, value in schema.items() if key not in _ANNOTATIONS}
    used = _used(clean)
    for key in clean:
        if key not in used:
            raise UnsupportedSchema(f"{path}.{key}",
                                    f"`{key}` cannot be enforced alongside "
                                    f"{' / '.join(sorted(used & clean.keys()))}")
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
    (lambda s, t: t in (None, "array") and "items" in s,
     frozenset({"type", "items", "minItems", "maxItems"})),
    (lambda s, t: t in (None, "array") and "prefixItems" in s,
     frozenset({"type", "prefixItems"})),
    (lambda s, t: t in (None, "string") and "pattern" in s, frozenset({"type", "pattern"})),
    (lambda s, t: t in (None, "string") and "format" in s, frozenset({"type", "format"})),
    (lambda s, t: t == "string", frozenset({"type", "minLength", "maxLength"})),
]


def _used(schema: dict[str, Any]) -> frozenset[str]:
    """The keywords the converter's branch for this schema reads (it ignores the rest)."""
    kind = schema.get("type")
    return next((used for applies, used in _BRANCHES if applies(schema, kind)),
                frozenset({"type"}))


def _check_keyword(key: str, value: Any, path: str, node: dict[str, Any]) -> Any:
    """``value`` as the converter will get it, or :class:`UnsupportedSchema`."""
    if key == "type":
        names = value if isinstance(value, list) else [value]
        unknown = [n for n in names if n not in _TYPES]
        if unknown or not names:
            raise UnsupportedSchema(path, f"unknown type {unknown or value!r}")
    elif key == "format" and value not in _FORMATS:
        raise UnsupportedSchema(path, f"format {value!r} cannot be enforced (supported: "
                                      f"{', '.join(sorted(_FORMATS))})")
    elif key == "pattern":
        _check_pattern(value, path)
    elif key == "required":
        _check_required(value, path, node)
    elif key == "properties":
        if not isinstance(value, dict):
            raise UnsupportedSchema(path, "properties must be an object")
        return {name: check_schema(sub, f"{path}.{name}") for name, sub in value.items()}
    elif key in ("anyOf", "oneOf", "prefixItems"):
        return _check_list(key, value, path)
    elif key == "items" or (key == "additionalProperties" and not isinstance(value, bool)):
        return check_schema(value, path)
    return value


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


def _check_list(key: str, value: Any, path: str) -> list[Any]:
    if not isinstance(value, list) or not value:
        raise UnsupportedSchema(path, f"{key} must be a non-empty list")
    checked = [check_schema(sub, f"{path}[{i}]") for i, sub in enumerate(value)]
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
    for j, later in enumerate(branches):
        for i, earlier in enumerate(branches[:j]):
            if not _disjoint(earlier, later):
                raise UnsupportedSchema(f"{path}[{j}]", f"oneOf branches {i} and {j} can "
                                        "match the same value, and the grammar cannot "
                                        "enforce exactly one; use anyOf")
    return branches


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


def _disjoint(a: dict[str, Any], b: dict[str, Any]) -> bool:
    common = _types(a) & _types(b)
    if not common:
        return True
    va, vb = _values(a), _values(b)
    if va is not None and vb is not None:
        return not va & vb
    if common != {"object"}:
        return False
    both = set(a.get("required", [])) & set(b.get("required", []))
    return any(_apart(a.get("properties", {}).get(k), b.get("properties", {}).get(k))
               for k in both)


def _apart(a: Any, b: Any) -> bool:
    """Two property schemas with ``const``/``enum`` values in common with none."""
    va, vb = _values(a), _values(b)
    return va is not None and vb is not None and not va & vb


# --- patterns ------------------------------------------------------------------------

# What a backslash may escape outside a class: the metacharacters the converter
# unescapes. It copies any other escape (\d, \s, even \.) into the grammar as is,
# which llama.cpp's grammar parser rejects; inside a class nothing may be escaped.
_ESCAPABLE = frozenset("[](){}*+?|")


def _unsafe_char(code: int) -> bool:
    """A character a JSON string cannot hold raw: ``"``, ``\\``, a control character."""
    return code in (0x22, 0x5C, 0x7F) or code < 0x20


def _check_pattern(pattern: Any, path: str) -> None:
    """A pattern the converter reads and whose every match, written raw between quotes,
    is a valid JSON string: anchored, no ``.``, no negated class, no class or
    literal reaching ``"``, ``\\`` or a control character, no ``\\d``-style escape, no
    ``|`` outside a group (the converter would put the quotes inside the alternatives)."""
    if not isinstance(pattern, str) or len(pattern) < 2 or not (
            pattern.startswith("^") and pattern.endswith("$")):
        raise UnsupportedSchema(path, "a pattern must be anchored: ^...$")
    body, i, depth = pattern[1:-1], 0, 0
    while i < len(body):
        i, depth = _pattern_unit(body, i, depth, path)
    _converts({"type": "string", "pattern": pattern}, path)


def _pattern_unit(body: str, i: int, depth: int, path: str) -> tuple[int, int]:
    """Check the pattern's unit at ``body[i]``: the index past it, and the group depth."""
    c = body[i]
    if c == "\\":
        _check_escape(body[i + 1:i + 2], path)
        return i + 2, depth
    if c == "[":
        return _check_class(body, i + 1, path), depth
    if c == "|" and depth == 0:
        raise UnsupportedSchema(path, "alternatives must be in a group: ^(a|b)$")
    if c in ".^$":
        raise UnsupportedSchema(path, f"`{c}` in a pattern is not supported (write "
                                      "[.] for a dot)")
    if _unsafe_char(ord(c)):
        raise UnsupportedSchema(path, f"a pattern cannot hold {c!r} unescaped in JSON")
    return i + 1, depth + (c == "(") - (c == ")")


def _check_escape(escaped: str, path: str, in_class: bool = False) -> None:
    if in_class or escaped not in _ESCAPABLE or not escaped:
        raise UnsupportedSchema(path, f"`\\{escaped}` in a pattern is not supported; "
                                      "write the characters out ([0-9], [a-z], [.]...)")


def _check_class(body: str, i: int, path: str) -> int:
    """Check the character class starting at ``body[i]`` (after ``[``); the index past
    its ``]``."""
    if body[i:i + 1] == "^":
        raise UnsupportedSchema(path, "a negated character class [^...] is not supported "
                                      "(it admits characters a JSON string cannot hold raw)")
    chars: list[str] = []
    while i < len(body) and body[i] != "]":
        if body[i] == "\\":
            _check_escape(body[i + 1:i + 2], path, in_class=True)
        chars.append(body[i])
        i += 1
    if i >= len(body):
        raise UnsupportedSchema(path, "unbalanced [ in the pattern")
    j = 0
    while j < len(chars):
        low = high = ord(chars[j])
        if j + 2 < len(chars) and chars[j + 1] == "-":
            high, j = ord(chars[j + 2]), j + 3
        else:
            j += 1
        if low < 0x20 or any(low <= code <= high for code in (0x22, 0x5C, 0x7F)):
            raise UnsupportedSchema(path, "a character class in the pattern reaches \", \\ "
                                          "or a control character")
    return i + 1


# --- grammars ------------------------------------------------------------------------


def _converts(schema: dict[str, Any], path: str, prop_order: list[str] | None = None) -> str:
    from llama_cpp.llama_grammar import json_schema_to_gbnf

    try:
        return str(json_schema_to_gbnf(json.dumps(schema), prop_order))
    except (ValueError, AssertionError, KeyError, TypeError, AttributeError,
            RecursionError) as exc:
        # e.g. a `pattern` with regex syntax the converter does not know
        raise UnsupportedSchema(path, f"cannot be turned into a grammar: {exc}") from exc


def schema_grammar(schema: dict[str, Any], path: str,
                   prop_order: list[str] | None = None) -> str:
    """The GBNF grammar (root rule ``root``) of a ref-inlined schema, checked first."""
    return _strict_strings(_converts(check_schema(schema, path), path, prop_order), path)


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


def response_format_grammar(fmt: ResponseFormat | None, path: str) -> str | None:
    """The grammar that enforces ``response_format`` (None: free text); a schema's
    refusals are named under ``path`` (``response_format.json_schema.schema``)."""
    if fmt is None or fmt.type == "text":
        return None
    if fmt.type == "json_object":
        return json_object_grammar()
    assert fmt.json_schema is not None  # checked by ResponseFormat
    return schema_grammar(inline_refs(fmt.json_schema.schema_, path), path)
