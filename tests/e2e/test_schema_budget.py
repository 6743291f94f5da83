"""Issue 27's hostile schemas through the HTTP API: each a quick 400 naming the keyword
and where it is, never a huge grammar in Redis, a crashed worker or a held event loop."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

from shared.registry import Registry
from shared.settings import DEFAULT_REGISTRY
from tests.conftest import Chatq
from tests.helpers import hi

WHERE = "response_format.json_schema.schema"
MODEL = Registry.load(DEFAULT_REGISTRY).default_name
QUICK_S = 10.0  # a busy CI machine; the 3,000-branch oneOf held the API for 40 s


def _deep(levels: int) -> dict[str, Any]:
    schema: dict[str, Any] = {"type": "string"}
    for _ in range(levels):
        schema = {"type": "object", "properties": {"a": schema}}
    return schema


HOSTILE: list[tuple[str, dict[str, Any], str]] = [
    ("minLength", {"type": "string", "minLength": 100_000_000}, ".minLength"),
    ("maxItems", {"type": "array", "items": {"type": "integer"}, "maxItems": 10_000_000},
     ".maxItems"),
    ("enum", {"enum": [f"v{i}" for i in range(100_000)]}, ".enum"),
    ("oneOf", {"oneOf": [{"const": i} for i in range(3_000)]}, ".oneOf"),
    ("nesting", _deep(200), ".properties.a" * 16 + ".type"),
]


def _response_format(schema: dict[str, Any]) -> dict[str, Any]:
    return {"type": "json_schema", "json_schema": {"name": "x", "schema": schema}}


def test_hostile_schemas_are_a_quick_400_naming_keyword_and_path(
    make_stack: Callable[..., Chatq],
) -> None:
    chatq = make_stack(with_worker=False)
    with chatq.client() as c:
        for name, schema, path in HOSTILE:
            fmt = _response_format(schema)
            started = time.monotonic()
            job = c.post("/v1/jobs", json=hi(response_format=fmt))
            chat = c.post("/v1/chat/completions", json={**hi(response_format=fmt),
                                                        "model": MODEL, "max_tokens": 4})
            assert time.monotonic() - started < QUICK_S, name
            assert job.status_code == 400, (name, job.text[:300])
            assert job.json()["error"]["details"][0]["field"] == WHERE + path, name
            assert chat.status_code == 400, (name, chat.text[:300])
            assert chat.json()["error"]["param"] == WHERE + path, name
        assert c.get("/healthz").status_code == 200
    keys = chatq.redis().dbsize()
    assert keys < 50  # no job (and no grammar) was stored


def test_hostile_requests_leave_redis_memory_as_it_was(
    make_stack: Callable[..., Chatq],
) -> None:
    """The issue's table, one tenant, one call each: a 300-byte schema once stored a 940 MB
    grammar, 100 MB of metadata once stayed in Redis for an hour. Now each is refused
    before anything is stored, so Redis holds what it held before (within a few MB)."""
    chatq = make_stack(with_worker=False)
    redis = chatq.redis()
    big_metadata = {f"k{i}": "v" * 500 for i in range(200_000)}  # ~100 MB
    bodies = [hi(response_format=_response_format(schema)) for _, schema, _ in HOSTILE]
    bodies += [
        {"messages": [{"role": "user", "content": "x" * 999_999}] * 20},
        hi(stop=["s" * 1_000_000]),
        hi(metadata=big_metadata),
        hi(max_tokens=True),
    ]
    with chatq.client() as c:
        c.get("/healthz")
        before = int(redis.info("memory")["used_memory"])
        for body in bodies:
            status = c.post("/v1/jobs", json=body).status_code
            assert status in (400, 413, 422), (status, str(body)[:200])
        after = int(redis.info("memory")["used_memory"])
    assert after - before < 4 * 2**20, (before, after)
