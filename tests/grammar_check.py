"""Does a GBNF grammar accept a text? Asked of llama.cpp's own grammar sampler
(:class:`workers.llama.sampling.SamplerChain`), token by token: each token is checked
before it is accepted (llama.cpp aborts on a forbidden one), and the text is whole when
the grammar then allows the end of generation."""

from __future__ import annotations

import llama_cpp
from llama_cpp import Llama

from shared.registry import Registry
from shared.schemas import SamplingParams
from shared.settings import DEFAULT_REGISTRY
from workers.llama.sampling import GrammarError, SamplerChain, _allows


def vocab_only() -> Llama:
    """The small model's vocabulary (no weights): enough for grammars."""
    registry = Registry.load(DEFAULT_REGISTRY)
    path = registry.gguf_path(registry.models[registry.default_name])
    return Llama(model_path=str(path), vocab_only=True, verbose=False)


def parses(llm: Llama, gbnf: str) -> bool:
    """llama.cpp's grammar parser takes it (root rule ``root``)."""
    vocab = llama_cpp.llama_model_get_vocab(llm.model)
    sampler = llama_cpp.llama_sampler_init_grammar(vocab, gbnf.encode(), b"root")
    if sampler:
        llama_cpp.llama_sampler_free(sampler)
    return bool(sampler)


def accepts(llm: Llama, gbnf: str, text: str) -> bool:
    """The grammar admits exactly ``text`` (as a whole answer)."""
    vocab = llama_cpp.llama_model_get_vocab(llm.model)
    params = SamplingParams(max_tokens=1, temperature=0.0, top_p=1.0, grammar=gbnf)
    chain = SamplerChain(params, vocab, llm.n_vocab(), 1)
    try:
        chain.replay(llm.tokenize(text.encode(), add_bos=False, special=False))
        return _allows(chain.grammar, llm.token_eos())
    except GrammarError:
        return False
    finally:
        chain.free()
