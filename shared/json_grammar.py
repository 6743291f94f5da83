"""JSON Schema to a llama.cpp GBNF grammar, refusing what a grammar cannot enforce.

llama-cpp-python's converter (``json_schema_to_gbnf``) silently ignores the
keywords it does not know (``minimum``, ``not``, ``uniqueItems``...), so output
sampled under its grammar may still fail the schema. chatq fails closed instead:
:func:`check_schema` walks the schema first and raises :class:`UnsupportedSchema`
naming the first keyword (and where it is) that the grammar would not enforce.
What passes the check, the grammar enforces: every value it admits validates.

Annotations (``title``, ``description``, ``default``, ``examples``...) are
allowed and have no effect. Local ``$ref`` s (``#/$defs/...``,
``#/definitions/...``) are inlined first (:func:`inline_refs`); a recursive or
remote one is refused.
"""

from __future__ import annotations

import json
from typing import Any

# Keywords the converter turns into grammar rules, exactly.
_ENFORCED = frozenset({
    "type", "properties", "required", "additionalProperties", "items", "prefixItems",
    "minItems", "maxItems", "enum", "const", "anyOf", "oneOf", "pattern", "format",
    "minLength", "maxLength",
})
# Keywords that constrain nothing.
_ANNOTATIONS = frozenset({
    "title", "description", "default", "examples", "$schema", "$id", "$comment",
    "deprecated", "readOnly", "writeOnly", "$defs", "definitions", "strict",
})
_FORMATS = frozenset({"date", "time", "date-time", "uuid"})
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


def check_schema(schema: Any, path: str) -> None:
    """Raise :class:`UnsupportedSchema` at the first construct the grammar would not
    enforce (``schema`` already has its references inlined)."""
    if isinstance(schema, bool):
        if schema:
            return
        raise UnsupportedSchema(path, "the schema `false` admits nothing")
    if not isinstance(schema, dict):
        raise UnsupportedSchema(path, "a schema must be a JSON object")
    for key, value in schema.items():
        if key in _ANNOTATIONS:
            continue
        if key not in _ENFORCED:
            raise UnsupportedSchema(f"{path}.{key}",
                                    f"JSON Schema keyword `{key}` cannot be enforced by "
                                    "chatq's grammar")
        _check_keyword(key, value, f"{path}.{key}")
    used = _used(schema)
    for key in schema:
        if key in _ENFORCED and key not in used:
            raise UnsupportedSchema(f"{path}.{key}",
                                    f"`{key}` cannot be enforced alongside "
                                    f"{' / '.join(sorted(used & schema.keys()))}")


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


def _check_keyword(key: str, value: Any, path: str) -> None:
    if key == "type":
        names = value if isinstance(value, list) else [value]
        unknown = [n for n in names if n not in _TYPES]
        if unknown or not names:
            raise UnsupportedSchema(path, f"unknown type {unknown or value!r}")
    elif key == "format" and value not in _FORMATS:
        raise UnsupportedSchema(path, f"format {value!r} cannot be enforced (supported: "
                                      f"{', '.join(sorted(_FORMATS))})")
    elif key == "properties":
        if not isinstance(value, dict):
            raise UnsupportedSchema(path, "properties must be an object")
        for name, sub in value.items():
            check_schema(sub, f"{path}.{name}")
    elif key in ("anyOf", "oneOf", "prefixItems"):
        _check_list(key, value, path)
    elif key == "items" or (key == "additionalProperties" and isinstance(value, dict)):
        check_schema(value, path)


def _check_list(key: str, value: Any, path: str) -> None:
    if not isinstance(value, list) or not value:
        raise UnsupportedSchema(path, f"{key} must be a non-empty list")
    for i, sub in enumerate(value):
        check_schema(sub, f"{path}[{i}]")


def schema_grammar(schema: dict[str, Any], path: str,
                   prop_order: list[str] | None = None) -> str:
    """The GBNF grammar (root rule ``root``) of a checked, ref-inlined schema."""
    from llama_cpp.llama_grammar import json_schema_to_gbnf

    check_schema(schema, path)
    try:
        return str(json_schema_to_gbnf(json.dumps(schema), prop_order))
    except (ValueError, AssertionError, KeyError, TypeError, AttributeError) as exc:
        # e.g. a `pattern` with regex syntax the converter does not know
        raise UnsupportedSchema(path, f"cannot be turned into a grammar: {exc}") from exc
