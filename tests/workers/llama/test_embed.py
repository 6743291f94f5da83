"""Embeddings and raw prompts on the llama engine, in-process, with the demo model.

The embedding context shares the loaded weights and runs beside the batched
generation without disturbing it; texts decoded together in one pack get the
vectors they get alone."""

from __future__ import annotations

import math
import threading
import time
from collections.abc import Iterator

import llama_cpp
import pytest

from shared.registry import Registry
from shared.schemas import SamplingParams
from shared.settings import DEFAULT_REGISTRY
from workers.engine import EmbeddingError, GenRequest
from workers.llama import LlamaEngine
from workers.llama.embed import packs


@pytest.fixture(scope="module")
def engine() -> Iterator[LlamaEngine]:
    registry = Registry.load(DEFAULT_REGISTRY)
    spec = registry.models[registry.default_name]
    engine = LlamaEngine(spec, registry.gguf_path(spec), n_threads=2, slots=2)
    yield engine
    engine.close()


def complete(engine: LlamaEngine, prompt: str, max_tokens: int = 16) -> str:
    params = SamplingParams(max_tokens=max_tokens, temperature=0, top_p=1)
    generation = engine.submit(GenRequest(
        job_id="raw", messages=[], prompt=engine.prompter.raw(prompt), params=params,
        deadline=time.monotonic() + 60))
    text = "".join(p.text for p in generation.pieces(0.1) if p is not None)
    assert generation.outcome.finish_reason in ("stop", "length")
    return text


def test_vectors_are_unit_length_in_order_and_reproducible(engine: LlamaEngine) -> None:
    texts = ["The cat sat on the mat.", "Quarterly tax filings are due.", "hello"]
    result = engine.embed(texts)
    assert len(result.vectors) == 3
    assert {len(v) for v in result.vectors} == {576}  # SmolLM2-135M's hidden size
    for v in result.vectors:
        assert math.isclose(math.fsum(x * x for x in v), 1.0, rel_tol=1e-5)
    assert result.prompt_tokens == sum(len(engine.prompter.raw(t).tokens) for t in texts)
    again = engine.embed(["hello"])  # alone, after others: nothing carried over
    assert again.vectors[0] == pytest.approx(result.vectors[2], abs=1e-6)


def test_embedding_beside_generation_changes_no_answer(engine: LlamaEngine) -> None:
    prompt = "The capital of France is"
    expected = complete(engine, prompt)
    assert expected
    answers: list[str] = []
    thread = threading.Thread(target=lambda: answers.append(complete(engine, prompt)))
    thread.start()
    for _ in range(3):
        engine.embed(["a sentence to embed while another job generates"])
    thread.join(60)
    assert answers == [expected]


def test_every_embedding_decode_runs_on_a_thread_that_ends_with_it(
        engine: LlamaEngine, monkeypatch: pytest.MonkeyPatch) -> None:
    """The job's thread must not compute with llama.cpp: OpenMP would keep a team of
    threads for it, and a lasting second team slowed every generation step."""
    decode = llama_cpp.llama_decode
    seen: list[threading.Thread] = []

    def recording(ctx: object, batch: object) -> int:
        seen.append(threading.current_thread())
        return int(decode(ctx, batch))

    monkeypatch.setattr(llama_cpp, "llama_decode", recording)
    caller = threading.current_thread()
    texts = [f"text number {i}" for i in range(70)]  # two packs (at most 64 texts each)
    assert len(engine.embed(texts).vectors) == 70
    assert len(seen) == 2 and len(set(seen)) == 2
    assert all(t is not caller and not t.is_alive() for t in seen)


def test_a_deadline_stops_between_texts(engine: LlamaEngine) -> None:
    with pytest.raises(EmbeddingError) as info:
        engine.embed(["one", "two"], deadline=time.monotonic() - 1)
    assert info.value.code == "timeout"


def test_stop_ends_between_packs(engine: LlamaEngine) -> None:
    asked: list[int] = []

    def stop() -> bool:
        asked.append(1)
        return len(asked) > 1  # the second pack is not embedded

    long = "word " * 1500  # two of these do not fit one pack (2048 tokens)
    with pytest.raises(EmbeddingError) as info:
        engine.embed([long, long, "three"], stop=stop)
    assert info.value.code == "cancelled" and len(asked) == 2


def test_texts_are_packed_in_order_within_the_context_and_the_sequence_cap() -> None:
    texts = [[0] * n for n in (5, 5, 10, 3, 12)]
    assert list(packs(texts, n_ctx=12)) == [[0, 1], [2], [3], [4]]
    assert list(packs(texts, n_ctx=100, max_seqs=2)) == [[0, 1], [2, 3], [4]]
    assert list(packs([], n_ctx=10)) == []
