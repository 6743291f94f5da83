"""The upstream engine against a tiny scripted OpenAI-compatible server (fast): streaming
and the upstream's usage, sampling parameters by kind of upstream, retries with
backoff, the mapping of refusals (400 at once with its message, 401 never retried),
Azure's URL and header, timeouts, cancel closing the connection, the deadline, slots,
and the key never reaching a job, a log line or the heartbeat."""

from __future__ import annotations

import logging
import time
from collections.abc import Iterator
from typing import Any

import pytest

from shared.registry import ModelSpec
from shared.schemas import SamplingParams
from shared.upstream import UpstreamOptions
from tests.workers.fake_upstream import FakeUpstream, Stall, Status, Stream, chunk, words
from workers.engine import GenRequest, Piece
from workers.upstream_engine import UpstreamEngine, UpstreamGeneration, request_body

KEY = "sk-test-0123456789abcdef"
ENV = {"UPSTREAM_KEY": KEY}


def spec(url: str, **upstream: Any) -> ModelSpec:
    slots = upstream.pop("slots", 2)
    options = {"url": url, "model": "up-model", "api_key_env": "UPSTREAM_KEY",
               "retries": 2, "backoff_s": 0.05, "timeout_s": 2, **upstream}
    return ModelSpec.model_validate({"name": "up", "queue": "upstream", "slots": slots,
                                     "upstream": options})


def request(max_tokens: int = 16, deadline_s: float = 10, continuation: str = "",
            **params: Any) -> GenRequest:
    sampling = SamplingParams.model_validate(
        {"max_tokens": max_tokens, "temperature": 0.5, "top_p": 0.9, "top_k": 0,
         "min_p": 0.0, **params})
    return GenRequest(job_id="job_1", messages=[{"role": "user", "content": "Hi"}],
                      prompt=None, params=sampling, deadline=time.monotonic() + deadline_s,
                      continuation=continuation)


def logged(caplog: pytest.LogCaptureFixture) -> str:
    """Every captured log record with its structured fields (as the JSON logs carry them)."""
    return "\n".join(f"{r.getMessage()} {r.__dict__}" for r in caplog.records)


def drain(generation: Any, timeout: float = 10) -> list[Piece]:
    pieces: list[Piece] = []
    deadline = time.monotonic() + timeout
    for piece in generation.pieces(0.05):
        assert time.monotonic() < deadline, "the generation did not end"
        if piece is not None:
            pieces.append(piece)
    return pieces


@pytest.fixture
def engines() -> Iterator[list[UpstreamEngine]]:
    made: list[UpstreamEngine] = []
    yield made
    for engine in made:
        engine.close()


def engine_for(engines: list[UpstreamEngine], url: str, **upstream: Any) -> UpstreamEngine:
    engine = UpstreamEngine(spec(url, **upstream), environ=ENV)
    engines.append(engine)
    return engine


def test_streams_the_answer_and_takes_the_upstreams_usage(
        upstream: FakeUpstream, engines: list[UpstreamEngine]) -> None:
    upstream.answers = [Stream([chunk("Hel"), chunk("lo"), chunk(" there", finish="stop"),
                                chunk(usage={"prompt_tokens": 11, "completion_tokens": 5,
                                             "total_tokens": 16})])]
    engine = engine_for(engines, upstream.url)
    assert engine.prompter is None and engine.context_size is None
    generation = engine.submit(request())
    pieces = drain(generation)
    assert "".join(p.text for p in pieces) == "Hello there"
    assert sum(p.tokens for p in pieces) == 5  # the last piece corrects the count
    assert pieces[-1] == Piece("", 2)
    outcome = generation.outcome
    assert (outcome.finish_reason, outcome.prompt_tokens, outcome.completion_tokens) == (
        "stop", 11, 5)
    (seen,) = upstream.seen
    assert seen.path == "/v1/chat/completions"
    assert seen.headers["authorization"] == f"Bearer {KEY}"
    assert seen.body["stream"] is True
    assert seen.body["stream_options"] == {"include_usage": True}
    assert seen.body["model"] == "up-model"
    assert seen.body["messages"] == [{"role": "user", "content": "Hi"}]


def test_without_a_usage_report_each_chunk_is_a_token(
        upstream: FakeUpstream, engines: list[UpstreamEngine]) -> None:
    upstream.answers = [Stream(words("a", " b", " c", finish="length"))]
    generation = engine_for(engines, upstream.url).submit(request())
    pieces = drain(generation)
    assert [p.tokens for p in pieces] == [1, 1, 1]
    outcome = generation.outcome
    assert (outcome.finish_reason, outcome.prompt_tokens, outcome.completion_tokens) == (
        "length", None, 3)


def test_logprobs_are_asked_for_and_counted_per_token(
        upstream: FakeUpstream, engines: list[UpstreamEngine]) -> None:
    entries = [{"token": "Hi", "logprob": -0.5, "bytes": None,
                "top_logprobs": [{"token": "Hi", "logprob": -0.5, "bytes": None}]},
               {"token": "!", "logprob": -1.0, "bytes": [33], "top_logprobs": []}]
    upstream.answers = [Stream([chunk("Hi!", logprobs={"content": entries}),
                                chunk(finish="stop")])]
    generation = engine_for(engines, upstream.url).submit(
        request(logprobs=True, top_logprobs=1))
    (piece,) = drain(generation)
    assert piece.tokens == 2 and piece.logprobs is not None
    assert [(t.token, t.bytes) for t in piece.logprobs] == [("Hi", [72, 105]), ("!", [33])]
    assert piece.logprobs[0].top[0].logprob == -0.5
    assert upstream.seen[0].body["logprobs"] is True
    assert upstream.seen[0].body["top_logprobs"] == 1


def test_sampling_params_are_forwarded_by_the_upstreams_names() -> None:
    params = SamplingParams(max_tokens=7, temperature=0.2, top_p=0.8, stop=["\n"], seed=3,
                            top_k=20, min_p=0.1, repeat_penalty=1.1, presence_penalty=0.5,
                            frequency_penalty=0.25, logit_bias={42: -100.0},
                            grammar='root ::= "x"')
    messages = [{"role": "user", "content": "Hi"}]
    common = {"temperature": 0.2, "top_p": 0.8, "stop": ["\n"], "seed": 3,
              "presence_penalty": 0.5, "frequency_penalty": 0.25, "logit_bias": {"42": -100.0}}

    def body(kind: str) -> dict[str, Any]:
        return request_body(UpstreamOptions(url="http://h/v1", kind=kind, model="m"),  # type: ignore[arg-type]
                            params, messages)

    openai = body("openai")
    assert openai.items() >= {**common, "max_completion_tokens": 7}.items()
    assert not {"top_k", "min_p", "repeat_penalty", "grammar", "max_tokens"} & set(openai)
    vllm = body("vllm")
    assert vllm.items() >= {**common, "max_tokens": 7, "top_k": 20, "min_p": 0.1,
                            "repetition_penalty": 1.1}.items()
    assert "grammar" not in vllm
    llama = body("llama.cpp")
    assert llama.items() >= {**common, "max_tokens": 7, "top_k": 20, "min_p": 0.1,
                             "repeat_penalty": 1.1, "grammar": "root ::= \"x\""}.items()
    # What an upstream cannot honour is named, never dropped.
    openai_options = UpstreamOptions(url="http://h/v1", model="m")
    assert [f for f, _ in openai_options.unsupported(params)] == [
        "top_k", "min_p", "repeat_penalty", "grammar"]
    neutral = SamplingParams(max_tokens=7, temperature=0.2, top_p=0.8, top_k=0, min_p=0.0)
    assert openai_options.unsupported(neutral) == []
    assert "top_k" not in request_body(
        UpstreamOptions(url="http://h/v1", kind="vllm", model="m"), neutral, messages)


def test_a_parameter_the_upstream_cannot_honour_fails_the_job_without_a_request(
        upstream: FakeUpstream, engines: list[UpstreamEngine]) -> None:
    generation = engine_for(engines, upstream.url).submit(request(top_k=5))
    assert drain(generation) == []
    assert generation.outcome.finish_reason == "error"
    assert generation.outcome.error_code == "unsupported_parameter"
    assert "top_k" in (generation.outcome.error or "")
    assert upstream.seen == []


def test_azure_deployment_url_api_version_and_api_key_header(
        upstream: FakeUpstream, engines: list[UpstreamEngine]) -> None:
    upstream.answers = [Stream(words("ok"))]
    base = upstream.url.removesuffix("/v1")
    url = f"{base}/openai/deployments/gpt4o/chat/completions?api-version=2024-10-21"
    engine = engine_for(engines, url, kind="azure", model=None)
    assert engine.options.url == f"{base}/openai/deployments/gpt4o"
    assert engine.options.api_version == "2024-10-21"
    generation = engine.submit(request())
    assert [p.text for p in drain(generation)] == ["ok"]
    (seen,) = upstream.seen
    assert seen.path == "/openai/deployments/gpt4o/chat/completions"
    assert seen.query == "api-version=2024-10-21"
    assert seen.headers["api-key"] == KEY and "authorization" not in seen.headers
    assert "model" not in seen.body and seen.body["max_completion_tokens"] == 16


def test_429_and_5xx_are_retried_with_backoff_then_succeed(
        upstream: FakeUpstream, engines: list[UpstreamEngine]) -> None:
    upstream.answers = [Status(429, {"error": {"message": "slow down"}},
                               {"Retry-After": "0.3"}),
                        Status(503, "busy"), Stream(words("fine"))]
    started = time.monotonic()
    generation = engine_for(engines, upstream.url, backoff_s=0.1).submit(request())
    assert [p.text for p in drain(generation)] == ["fine"]
    elapsed = time.monotonic() - started
    assert generation.outcome.finish_reason == "stop"
    assert len(upstream.seen) == 3
    assert elapsed >= 0.3 + 0.2  # Retry-After, then the second backoff (0.1 doubled)


def test_retries_used_up_fail_with_upstream_error_naming_the_status(
        upstream: FakeUpstream, engines: list[UpstreamEngine]) -> None:
    upstream.answers = [Status(502, "bad gateway")]
    generation = engine_for(engines, upstream.url, retries=2).submit(request())
    assert drain(generation) == []
    outcome = generation.outcome
    assert (outcome.finish_reason, outcome.error_code) == ("error", "upstream_error")
    assert "HTTP 502" in (outcome.error or "") and "3 time(s)" in (outcome.error or "")
    assert len(upstream.seen) == 3


def test_a_400_fails_at_once_with_the_upstreams_message(
        upstream: FakeUpstream, engines: list[UpstreamEngine]) -> None:
    upstream.answers = [Status(400, {"error": {
        "message": "This model's maximum context length is 1024 tokens.",
        "type": "invalid_request_error", "code": "context_length_exceeded"}})]
    generation = engine_for(engines, upstream.url).submit(request())
    assert drain(generation) == []
    outcome = generation.outcome
    assert outcome.error_code == "upstream_rejected"
    assert "HTTP 400" in (outcome.error or "")
    assert "maximum context length is 1024 tokens" in (outcome.error or "")
    assert len(upstream.seen) == 1


def test_a_refused_key_is_not_retried_and_never_shown(
        upstream: FakeUpstream, engines: list[UpstreamEngine],
        caplog: pytest.LogCaptureFixture) -> None:
    upstream.answers = [Status(401, {"error": {"message": f"Incorrect API key provided: {KEY}"}})]
    caplog.set_level(logging.DEBUG)
    engine = engine_for(engines, upstream.url)
    generation = engine.submit(request())
    drain(generation)
    outcome = generation.outcome
    assert outcome.error_code == "upstream_error"
    assert "HTTP 401" in (outcome.error or "") and "$UPSTREAM_KEY" in (outcome.error or "")
    assert KEY not in (outcome.error or "")
    assert len(upstream.seen) == 1
    assert "HTTP 401" in logged(caplog) and KEY not in logged(caplog)
    assert all(KEY not in v for v in engine.info().values())
    assert KEY not in repr(engine)


def test_a_key_echoed_by_the_upstream_is_redacted(
        upstream: FakeUpstream, engines: list[UpstreamEngine],
        caplog: pytest.LogCaptureFixture) -> None:
    upstream.answers = [Status(422, {"detail": f"bad field; your key {KEY} is fine"})]
    caplog.set_level(logging.DEBUG)
    generation = engine_for(engines, upstream.url).submit(request())
    drain(generation)
    error = generation.outcome.error or ""
    assert generation.outcome.error_code == "upstream_rejected"
    assert "bad field; your key [redacted] is fine" in error and KEY not in error
    assert "[redacted]" in logged(caplog) and KEY not in logged(caplog)


def test_a_stopped_upstream_is_retried_then_fails(engines: list[UpstreamEngine]) -> None:
    stopped = FakeUpstream()
    url = stopped.url
    stopped.server.server_close()  # nothing listens there any more
    generation = engine_for(engines, url, retries=1).submit(request())
    drain(generation)
    outcome = generation.outcome
    assert outcome.error_code == "upstream_error"
    assert "ConnectError" in (outcome.error or "") and "2 time(s)" in (outcome.error or "")


def test_a_silent_upstream_times_out_and_is_retried(
        upstream: FakeUpstream, engines: list[UpstreamEngine]) -> None:
    upstream.answers = [Stall(1.5)]
    started = time.monotonic()
    generation = engine_for(engines, upstream.url, retries=1, timeout_s=0.3).submit(request())
    drain(generation)
    assert generation.outcome.error_code == "upstream_error"
    assert "ReadTimeout" in (generation.outcome.error or "")
    assert len(upstream.seen) == 2
    assert time.monotonic() - started < 1.5


def test_cancel_mid_stream_closes_the_upstream_request(
        upstream: FakeUpstream, engines: list[UpstreamEngine]) -> None:
    upstream.answers = [Stream(words(*[f" w{i}" for i in range(200)]), delay_s=0.02)]
    generation = engine_for(engines, upstream.url).submit(request(max_tokens=500))
    got: list[Piece] = []
    for piece in generation.pieces(0.05):
        if piece is not None:
            got.append(piece)
        if len(got) == 3:
            cancelled_at = time.monotonic()
            generation.cancel()
    assert time.monotonic() - cancelled_at < 0.5
    assert generation.outcome.finish_reason == "cancelled"
    assert 3 <= len(got) < 50
    assert upstream.client_gone.wait(2), "the upstream never saw its client go"


def test_the_deadline_ends_the_generation_with_timeout(
        upstream: FakeUpstream, engines: list[UpstreamEngine]) -> None:
    upstream.answers = [Stream(words(*[f" w{i}" for i in range(200)]), delay_s=0.02)]
    generation = engine_for(engines, upstream.url).submit(request(deadline_s=0.3))
    pieces = drain(generation)
    assert generation.outcome.finish_reason == "timeout"
    assert 0 < len(pieces) < 100


def test_a_stream_broken_after_text_fails_without_a_retry(
        upstream: FakeUpstream, engines: list[UpstreamEngine]) -> None:
    upstream.answers = [Stream([chunk("a"), chunk(" b")], done=False)]
    generation = engine_for(engines, upstream.url).submit(request())
    assert [p.text for p in drain(generation)] == ["a", " b"]
    outcome = generation.outcome
    assert outcome.error_code == "upstream_error"
    assert "broke off after 2 tokens" in (outcome.error or "")
    assert outcome.completion_tokens == 2
    assert len(upstream.seen) == 1


def test_an_error_event_mid_stream_is_mapped(
        upstream: FakeUpstream, engines: list[UpstreamEngine]) -> None:
    upstream.answers = [Stream([{"error": {"message": "prompt too long", "code": 400}}],
                               done=False)]
    generation = engine_for(engines, upstream.url).submit(request())
    drain(generation)
    assert generation.outcome.error_code == "upstream_rejected"
    assert "prompt too long" in (generation.outcome.error or "")


def test_only_vllm_continues_a_redelivered_partial_answer(
        upstream: FakeUpstream, engines: list[UpstreamEngine]) -> None:
    upstream.answers = [Stream(words(" more"))]
    openai = engine_for(engines, upstream.url).submit(request(continuation="Partial"))
    drain(openai)
    assert openai.outcome.error_code == "upstream_error"
    assert "cannot continue a partial answer" in (openai.outcome.error or "")
    assert upstream.seen == []
    vllm = engine_for(engines, upstream.url, kind="vllm").submit(request(continuation="Partial"))
    assert [p.text for p in drain(vllm)] == [" more"]
    body = upstream.seen[0].body
    assert body["messages"][-1] == {"role": "assistant", "content": "Partial"}
    assert body["continue_final_message"] is True and body["add_generation_prompt"] is False


def test_at_most_slots_requests_are_in_flight(
        upstream: FakeUpstream, engines: list[UpstreamEngine]) -> None:
    upstream.answers = [Stream(words(*[f" w{i}" for i in range(10)]), delay_s=0.03)]
    engine = engine_for(engines, upstream.url, slots=2)
    generations = [engine.submit(request()) for _ in range(4)]
    time.sleep(0.15)
    assert engine.busy() == 2
    for generation in generations:
        drain(generation)
        assert generation.outcome.finish_reason == "stop"
    assert upstream.most_in_flight == 2
    assert engine.busy() == 0


def test_close_cancels_what_is_in_flight(upstream: FakeUpstream) -> None:
    upstream.answers = [Stream(words(*[f" w{i}" for i in range(200)]), delay_s=0.02)]
    engine = UpstreamEngine(spec(upstream.url), environ=ENV)
    generation = engine.submit(request(max_tokens=500))
    time.sleep(0.2)
    engine.close()
    assert isinstance(generation, UpstreamGeneration) and generation.done.is_set()
    assert generation.outcome.finish_reason == "cancelled"


def test_the_heartbeat_shows_the_upstream_without_credentials(
        upstream: FakeUpstream, engines: list[UpstreamEngine]) -> None:
    info = engine_for(engines, upstream.url).info()
    assert info["upstream_url"] == upstream.url
    assert info["upstream_model"] == "up-model"
    assert info["upstream_kind"] == "openai" and info["upstream_busy"] == "0"


def test_a_malformed_answer_fails_the_job_instead_of_hanging_it(
        upstream: FakeUpstream, engines: list[UpstreamEngine],
        caplog: pytest.LogCaptureFixture) -> None:
    upstream.answers = [Stream([{"choices": [{"index": 0, "delta": f"not an object {KEY}"}]}])]
    generation = engine_for(engines, upstream.url).submit(request())
    drain(generation)
    assert generation.outcome.error_code == "upstream_error"
    assert "AttributeError" in (generation.outcome.error or "")
    assert "upstream generation failed" in logged(caplog) and KEY not in logged(caplog)
