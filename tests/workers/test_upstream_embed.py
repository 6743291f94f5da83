"""The upstream engine's embeddings against the scripted OpenAI-compatible server:
one ``POST /embeddings`` with the upstream's model name and key, vectors in input
order, its usage; refusals, errors and the deadline fail the job's embedding."""

from __future__ import annotations

import time
from collections.abc import Iterator

import pytest

from tests.workers.fake_upstream import FakeUpstream, Stall, Status
from tests.workers.test_upstream_engine import ENV, KEY, spec
from workers.engine import EmbeddingError
from workers.upstream_engine import UpstreamEngine


@pytest.fixture
def engine(upstream: FakeUpstream) -> Iterator[UpstreamEngine]:
    made = UpstreamEngine(spec(upstream.url), environ=ENV)
    yield made
    made.close()


def answer(*vectors: list[float], prompt_tokens: int = 7) -> Status:
    data = [{"object": "embedding", "index": i, "embedding": v} for i, v in enumerate(vectors)]
    return Status(200, {"object": "list", "data": data[::-1], "model": "up-model",
                        "usage": {"prompt_tokens": prompt_tokens, "total_tokens": prompt_tokens}})


def test_embeddings_are_forwarded_in_one_request(upstream: FakeUpstream,
                                                 engine: UpstreamEngine) -> None:
    upstream.answers = [answer([1.0, 0.0], [0.0, 1.0])]
    result = engine.embed(["a", "b"], deadline=time.monotonic() + 5)
    assert result.vectors == [[1.0, 0.0], [0.0, 1.0]]  # by index, not by position
    assert result.prompt_tokens == 7
    [seen] = upstream.seen
    assert seen.path == "/v1/embeddings"
    assert seen.body == {"input": ["a", "b"], "encoding_format": "float", "model": "up-model"}
    assert seen.headers["authorization"] == f"Bearer {KEY}"


def test_a_refusal_fails_with_the_upstreams_message(upstream: FakeUpstream,
                                                    engine: UpstreamEngine) -> None:
    upstream.answers = [Status(400, {"error": {"message": f"bad input {KEY}"}})]
    with pytest.raises(EmbeddingError) as info:
        engine.embed(["a"])
    assert info.value.code == "upstream_rejected"
    assert "bad input" in str(info.value) and KEY not in str(info.value)


@pytest.mark.parametrize("reply", [
    Status(500, "boom"), Status(200, {"data": [{"index": 0}]}), Status(200, "not json"),
    Status(200, {"data": []}),
])
def test_errors_and_malformed_answers_fail_with_upstream_error(
    upstream: FakeUpstream, engine: UpstreamEngine, reply: Status
) -> None:
    upstream.answers = [reply]
    with pytest.raises(EmbeddingError) as info:
        engine.embed(["a"])
    assert info.value.code == "upstream_error"


def test_the_deadline_ends_a_slow_upstream(upstream: FakeUpstream,
                                           engine: UpstreamEngine) -> None:
    upstream.answers = [Stall(1.0)]
    started = time.monotonic()
    with pytest.raises(EmbeddingError) as info:
        engine.embed(["a"], deadline=time.monotonic() + 0.2)
    assert info.value.code == "timeout" and time.monotonic() - started < 0.9
