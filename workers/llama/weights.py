"""A GGUF model's weights, loaded once per engine, and its vocabulary-only ``Llama``
(tokenizer and chat template for the prompter)."""

from __future__ import annotations

from pathlib import Path

import llama_cpp
from llama_cpp import Llama

from shared.registry import ModelSpec
from workers.llama.params import model_params


class Weights:
    """The weights (loaded once) and a vocabulary-only ``Llama`` for the prompter."""

    def __init__(self, spec: ModelSpec, path: Path) -> None:
        self.tokenizer = Llama(model_path=str(path), vocab_only=True, verbose=False)
        params, keep = model_params(spec)
        self.ptr = llama_cpp.llama_model_load_from_file(str(path).encode(), params)
        del keep  # llama.cpp has read the tensor split
        if not self.ptr:
            self.tokenizer.close()
            raise RuntimeError(f"llama.cpp could not load {path}")
        self.vocab = llama_cpp.llama_model_get_vocab(self.ptr)
        self.n_vocab = llama_cpp.llama_vocab_n_tokens(self.vocab)

    def close(self) -> None:
        if self.ptr:
            llama_cpp.llama_model_free(self.ptr)
            self.ptr = None
        self.tokenizer.close()

