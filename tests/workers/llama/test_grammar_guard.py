"""The worker's last guard before llama.cpp: a grammar over the size budget fails its
job instead of reaching llama.cpp's recursive parser, which died with SIGSEGV (the
whole worker, and with a redelivered job the next worker too) on the grammar of
``"maxLength": 30000``."""

from __future__ import annotations

import json

import llama_cpp
import pytest
from llama_cpp import Llama
from llama_cpp.llama_grammar import json_schema_to_gbnf

from shared.schemas import SamplingParams
from tests.grammar_check import vocab_only
from workers.llama.sampling import GrammarError, SamplerChain


@pytest.fixture(scope="module")
def vocab_llm() -> Llama:
    return vocab_only()


def chain(llm: Llama, grammar: str) -> SamplerChain:
    vocab = llama_cpp.llama_model_get_vocab(llm.model)
    params = SamplingParams(max_tokens=8, temperature=0.0, top_p=1.0, grammar=grammar)
    return SamplerChain(params, vocab, llm.n_vocab(), 1)


def test_a_grammar_nested_deep_enough_to_crash_llama_cpp_fails_the_job(
        vocab_llm: Llama) -> None:
    poison = str(json_schema_to_gbnf(json.dumps({"type": "string", "maxLength": 30_000})))
    with pytest.raises(GrammarError, match=r"refused before llama\.cpp: .* nests groups"):
        chain(vocab_llm, poison)


def test_a_grammar_over_the_size_budget_fails_the_job(vocab_llm: Llama) -> None:
    huge = 'root ::= "' + "a" * 1_000_001 + '"'
    with pytest.raises(GrammarError, match="over the limit of 1000000"):
        chain(vocab_llm, huge)


def test_a_grammar_within_budget_still_reaches_llama_cpp(vocab_llm: Llama) -> None:
    fine = str(json_schema_to_gbnf(json.dumps({"type": "string", "maxLength": 1000})))
    chain(vocab_llm, fine).free()
