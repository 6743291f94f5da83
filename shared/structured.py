"""Structured output: ``response_format`` as a GBNF grammar the sampler enforces.

``json_object`` is llama.cpp's generic JSON-object grammar; ``json_schema`` is
converted by llama-cpp-python's ``json_schema_to_gbnf``. That converter quietly
skips what it does not understand (``minimum``, ``pattern`` with some regexes,
``oneOf`` read as ``anyOf``, siblings of ``$ref``...), which would make a schema
*accepted but not enforced*. So a schema is first checked against an
allow-list (:data:`_HONOURED`): at each node, the keywords the converter's
branch for that node honours, plus annotations it may drop safely. Anything
else is refused (:class:`UnenforceableSchema`, naming the keyword and where it
is): fail closed, never open. What passes is enforced, so the answer parses
and validates against the schema (unless ``max_tokens`` cuts it: then the job's
``finish_reason`` is ``length``).
"""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

from shared.schemas import ResponseFormat

# Keywords that only describe: dropped before conversion, they constrain nothing.
_ANNOTATIONS = frozenset({"title", "description", "default", "examples", "$comment",
                          "deprecated", "readOnly", "writeOnly", "$schema"})
_TYPES = frozenset({"object", "array", "string", "number", "integer", "boolean", "null"})
# String formats the converter has a grammar for (others would be plain strings).
_FORMATS = frozenset({"date", "time", "date-time", "uuid", "uuid1", "uuid2", "uuid3",
                      "uuid4", "uuid5"})
_DEFS = ("$defs", "definitions")


class UnenforceableSchema(ValueError):
    """A schema construct chatq cannot enforce by grammar; ``where`` is its JSON pointer."""

    def __init__(self, where: str, why: str) -> None:
        super().__init__(f"{where or '/'}: {why}")
        self.where = where


def _type_of(node: dict[str, Any], where: str) -> str | list[str] | None:
    kind = node.get("type")
    kinds = kind if isinstance(kind, list) else [kind] if kind is not None else []
    for k in kinds:
        if k not in _TYPES:
            raise UnenforceableSchema(f"{where}/type", f"unknown type {k!r}")
    return kind


# The converter takes one branch per node, the first whose test holds; each branch
# honours these keywords (and ignores any other).
_BRANCHES: list[tuple[Callable[[dict[str, Any], Any], bool], frozenset[str]]] = [
    (lambda n, k: "$ref" in n, frozenset({"$ref"})),
    (lambda n, k: "anyOf" in n, frozenset({"anyOf"})),
    (lambda n, k: isinstance(k, list), frozenset({"type"})),
    (lambda n, k: "const" in n, frozenset({"const", "type"})),
    (lambda n, k: "enum" in n, frozenset({"enum", "type"})),
    (lambda n, k: k in (None, "object") and ("properties" in n or "additionalProperties" in n),
     frozenset({"type", "properties", "required", "additionalProperties"})),
    (lambda n, k: k in (None, "array") and "items" in n,
     frozenset({"type", "items", "minItems", "maxItems"})),
    (lambda n, k: k in (None, "string") and "format" in n, frozenset({"type", "format"})),
    (lambda n, k: k == "string" and ("minLength" in n or "maxLength" in n),
     frozenset({"type", "minLength", "maxLength"})),
]


def _honoured(node: dict[str, Any], where: str) -> frozenset[str]:
    """The keywords the converter honours for this node."""
    kind = _type_of(node, where)
    return next((keys for test, keys in _BRANCHES if test(node, kind)), frozenset({"type"}))


def _check_node(node: Any, where: str, defs: dict[str, Any]) -> dict[str, Any]:
    """The node without annotations, every keyword in it enforceable (else refused)."""
    if not isinstance(node, dict):
        raise UnenforceableSchema(where, "a schema must be an object (true/false schemas "
                                         "are not supported)")
    clean = {k: v for k, v in node.items() if k not in _ANNOTATIONS and k not in _DEFS}
    if where and any(k in node for k in _DEFS):
        raise UnenforceableSchema(where, "$defs are taken at the top of the schema only")
    allowed = _honoured(clean, where)
    for key in clean:
        if key not in allowed:
            raise UnenforceableSchema(f"{where}/{key}", f"`{key}` cannot be enforced "
                                      "here by chatq's grammar; remove it")
    return {k: _check_value(k, v, f"{where}/{k}", defs, clean) for k, v in clean.items()}


def _check_value(key: str, value: Any, where: str, defs: dict[str, Any],
                 node: dict[str, Any]) -> Any:
    if key == "$ref":
        return _check_ref(value, where, defs)
    if key == "anyOf":
        if not isinstance(value, list) or not value:
            raise UnenforceableSchema(where, "anyOf must be a non-empty list")
        return [_check_node(v, f"{where}/{i}", defs) for i, v in enumerate(value)]
    if key == "properties":
        if not isinstance(value, dict):
            raise UnenforceableSchema(where, "properties must be an object")
        return {name: _check_node(v, f"{where}/{name}", defs) for name, v in value.items()}
    if key in ("items", "additionalProperties"):
        return _check_subschema(key, value, where, defs)
    _check_leaf(key, value, where, node)
    return value


def _check_subschema(key: str, value: Any, where: str, defs: dict[str, Any]) -> Any:
    if not isinstance(value, bool):
        return _check_node(value, where, defs)
    if key == "items":
        raise UnenforceableSchema(where, "items must be a schema")
    return value


def _check_leaf(key: str, value: Any, where: str, node: dict[str, Any]) -> None:
    if key == "required":
        missing = [r for r in value if r not in node.get("properties", {})]
        if missing:
            raise UnenforceableSchema(where, f"required names {missing[0]!r}, which is not "
                                             "in properties")
    if key == "format" and value not in _FORMATS:
        raise UnenforceableSchema(where, f"format {value!r} cannot be enforced; "
                                         f"supported: {', '.join(sorted(_FORMATS))}")


def _check_ref(ref: Any, where: str, defs: dict[str, Any]) -> str:
    for prefix in ("#/$defs/", "#/definitions/"):
        if isinstance(ref, str) and ref.startswith(prefix) and ref[len(prefix):] in defs:
            return ref
    raise UnenforceableSchema(where, f"$ref {ref!r}: only local references to "
                                     "#/$defs/... (or #/definitions/...) are supported")


def check_schema(schema: dict[str, Any]) -> dict[str, Any]:
    """The schema as the converter will get it: annotations dropped, every keyword
    enforceable; :class:`UnenforceableSchema` otherwise."""
    if not isinstance(schema, dict):
        raise UnenforceableSchema("", "the schema must be a JSON object")
    defs: dict[str, Any] = {}
    for key in _DEFS:
        if key in schema:
            if not isinstance(schema[key], dict):
                raise UnenforceableSchema(f"/{key}", f"{key} must be an object")
            defs |= schema[key]
    clean = _check_node(schema, "", defs)
    for key in _DEFS:
        if key in schema:
            clean[key] = {name: _check_node(d, f"/{key}/{name}", defs)
                          for name, d in schema[key].items()}
    return clean


def json_object_grammar() -> str:
    from llama_cpp.llama_grammar import JSON_GBNF

    return JSON_GBNF


def schema_grammar(schema: dict[str, Any]) -> str:
    """GBNF for a JSON schema (checked first: see :func:`check_schema`)."""
    from llama_cpp.llama_grammar import json_schema_to_gbnf

    clean = check_schema(schema)
    try:
        grammar = json_schema_to_gbnf(json.dumps(clean))
    except (AssertionError, KeyError, ValueError, TypeError, RecursionError) as exc:
        raise UnenforceableSchema("", f"cannot build a grammar from it ({exc})") from exc
    return _strict_strings(grammar)


# The converter's string character lets control characters through (a raw newline in
# a string), which JSON parsers refuse; JSON allows them only escaped.
_LAX_CHAR = r'char ::= [^"\\] |'
_STRICT_CHAR = r'char ::= [^"\\\x7F\x00-\x1F] |'


def _strict_strings(grammar: str) -> str:
    lines = grammar.splitlines()
    for i, line in enumerate(lines):
        if line.startswith("char ::="):
            if not line.startswith(_LAX_CHAR):
                raise UnenforceableSchema("", "unexpected string rule from the grammar "
                                              "converter (a llama-cpp-python change?)")
            lines[i] = _STRICT_CHAR + line[len(_LAX_CHAR):]
    return "\n".join(lines)


def grammar_for(fmt: ResponseFormat | None) -> str | None:
    """The grammar that enforces ``response_format`` (None: free text)."""
    if fmt is None or fmt.type == "text":
        return None
    if fmt.type == "json_object":
        return json_object_grammar()
    assert fmt.json_schema is not None  # checked by ResponseFormat
    return schema_grammar(fmt.json_schema.schema_)
