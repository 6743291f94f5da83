"""One job's llama.cpp sampler chain.

Each generation owns one chain (:class:`SamplerChain`): its penalties remember
only that job's tokens, its grammar only that job's text, its random generator
only that job's seed. So a seeded job draws the same tokens whether it runs
alone or beside others, and nothing one job samples can move another.

:func:`_samplers` lists the chain's stages in order; a new sampling option is
one more ``if`` there. Neutral values (top_k 0, min_p 0, penalties off, no
bias, no grammar) add no stage, so they cost nothing per token.
"""

from __future__ import annotations

import ctypes
import re
from collections.abc import Iterator
from typing import Any

import llama_cpp
import numpy as np

from shared.json_grammar import grammar_problem
from shared.schemas import SamplingParams

# llama.cpp reads this seed value as "pick one at random"; a caller's seed never maps to it.
_SEED_SPACE = llama_cpp.LLAMA_DEFAULT_SEED
_ROOT_RULE = re.compile(r"^\s*root\s*::=", re.MULTILINE)


class GrammarError(ValueError):
    """The job's GBNF grammar cannot be used (it fails that job, not the engine)."""


def chain_seed(seed: int | None, fallback: int) -> int:
    """The seed the chain's random generator starts from (``fallback`` when unset)."""
    return (fallback if seed is None else seed) % _SEED_SPACE


def _grammar(vocab: Any, text: str) -> Any:
    """llama.cpp's grammar stage; a grammar over the size budget (shared.json_grammar)
    never reaches llama.cpp, whose recursive parser dies (SIGSEGV, the whole worker)
    on groups nested tens of thousands deep."""
    if not _ROOT_RULE.search(text):
        raise GrammarError("invalid grammar: no `root ::= ...` rule (GBNF)")
    problem = grammar_problem(text)
    if problem:
        raise GrammarError(f"grammar refused before llama.cpp: {problem}")
    sampler = llama_cpp.llama_sampler_init_grammar(vocab, text.encode("utf-8"), b"root")
    if not sampler:
        raise GrammarError("invalid grammar: llama.cpp could not parse it (GBNF syntax, "
                           "undefined rule or left recursion; the worker's stderr has details)")
    return sampler


def _logit_bias(n_vocab: int, bias: dict[int, float]) -> Any:
    for token in bias:
        if not 0 <= token < n_vocab:
            raise ValueError(f"logit_bias names token {token}, outside the vocabulary")
    items = (llama_cpp.llama_logit_bias * len(bias))(
        *(llama_cpp.llama_logit_bias(token, value) for token, value in bias.items()))
    return llama_cpp.llama_sampler_init_logit_bias(n_vocab, len(bias), items)


def _samplers(p: SamplingParams, vocab: Any, n_vocab: int, seed: int) -> Iterator[Any]:
    """The chain's stages, in order: bias and penalties change the logits, the
    grammar masks what it forbids, then greedy or top-k/top-p/min-p/temperature/draw."""
    if p.logit_bias:
        yield _logit_bias(n_vocab, p.logit_bias)
    if p.repeat_penalty != 1 or p.presence_penalty or p.frequency_penalty:
        yield llama_cpp.llama_sampler_init_penalties(
            n_vocab, p.penalty_last_n, p.repeat_penalty, p.frequency_penalty,
            p.presence_penalty)
    if p.grammar:
        yield _grammar(vocab, p.grammar)
    if p.temperature <= 0:
        yield llama_cpp.llama_sampler_init_greedy()
        return
    if p.top_k > 0:
        yield llama_cpp.llama_sampler_init_top_k(p.top_k)
    if p.top_p < 1:
        yield llama_cpp.llama_sampler_init_top_p(p.top_p, 1)
    if p.min_p > 0:
        yield llama_cpp.llama_sampler_init_min_p(p.min_p, 1)
    yield llama_cpp.llama_sampler_init_temp(p.temperature)
    yield llama_cpp.llama_sampler_init_dist(seed)


class SamplerChain:
    """A llama.cpp sampler chain for one job; :meth:`free` once, when the job ends."""

    def __init__(self, params: SamplingParams, vocab: Any, n_vocab: int, seed: int) -> None:
        self.ptr: Any = llama_cpp.llama_sampler_chain_init(
            llama_cpp.llama_sampler_chain_default_params())
        try:
            for stage in _samplers(params, vocab, n_vocab, seed):
                if not stage:
                    raise RuntimeError("llama.cpp could not create a sampler")
                llama_cpp.llama_sampler_chain_add(self.ptr, stage)  # the chain owns it now
        except BaseException:
            self.free()
            raise
        self.grammar: Any = self._stage(b"grammar")  # owned by the chain

    def _stage(self, name: bytes) -> Any:
        for i in range(llama_cpp.llama_sampler_chain_n(self.ptr)):
            stage = llama_cpp.llama_sampler_chain_get(self.ptr, i)
            if llama_cpp.llama_sampler_name(stage) == name:
                return stage
        return None

    def replay(self, tokens: list[int]) -> None:
        """Feed tokens an earlier attempt generated (penalties and grammar catch up).

        llama.cpp aborts the process when a grammar accepts a token it forbids,
        so each one is checked first; a continuation the grammar refuses fails the job.
        """
        for token in tokens:
            if self.grammar is not None and not _allows(self.grammar, token):
                raise GrammarError("the text of the earlier attempt does not match the grammar")
            llama_cpp.llama_sampler_accept(self.ptr, token)

    def free(self) -> None:
        if self.ptr:
            llama_cpp.llama_sampler_free(self.ptr)
        self.ptr = None
        self.grammar = None


def _allows(grammar: Any, token: int) -> bool:
    data = llama_cpp.llama_token_data(token, 0.0, 0.0)
    cur = llama_cpp.llama_token_data_array(
        ctypes.cast(ctypes.pointer(data), llama_cpp.llama_token_data_p), 1, -1, False)
    llama_cpp.llama_sampler_apply(grammar, ctypes.byref(cur))
    return bool(np.isfinite(data.logit))
