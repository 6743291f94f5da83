"""Embeddings on the worker's resident GGUF model: a second llama.cpp context on the
same weights.

The generating context (:mod:`workers.llama_engine`) outputs logits, not
embeddings, and its sequences belong to the scheduler thread; so embedding jobs
use a context of their own. What holds, and why:

- **The weights are shared, not loaded twice**: the context is made from the
  model the engine already holds (llama.cpp allows several contexts per model;
  the model is read-only). It is created on the first embedding job (a worker
  that never embeds pays nothing) and freed before the weights.
- **One text at a time, under a lock**: llama.cpp contexts are not thread-safe
  and the jobs of a worker run in several threads. A text is decoded whole in
  one micro-batch (``n_ubatch`` = ``context_size``): pooling needs every token.
  Its memory is cleared before each text, so nothing of one text reaches another.
- **Pooling**: a model marked ``embedding`` in the registry is pooled as its GGUF
  says (CLS, mean, last...); any other by the mean of its tokens' last hidden
  states. The vectors are L2-normalised (unit length), as OpenAI's are.
"""

from __future__ import annotations

import logging
import math
import threading
import time
from collections.abc import Callable, Sequence
from typing import Any

import llama_cpp

from shared.registry import ModelSpec
from workers.engine import EmbeddingError
from workers.llama_params import context_params

log = logging.getLogger(__name__)


class Embedder:
    """A pooled-embeddings context on an already loaded model (``model_ptr``)."""

    def __init__(self, model_ptr: Any, spec: ModelSpec, n_threads: int) -> None:
        params = context_params(spec, 1, spec.context_size, n_threads)
        params.n_ubatch = spec.context_size  # a whole text in one micro-batch
        params.embeddings = True
        params.pooling_type = (llama_cpp.LLAMA_POOLING_TYPE_UNSPECIFIED if spec.embedding
                               else llama_cpp.LLAMA_POOLING_TYPE_MEAN)
        self.ctx = llama_cpp.llama_init_from_model(model_ptr, params)
        if not self.ctx:
            raise EmbeddingError("llama.cpp could not create an embedding context")
        if llama_cpp.llama_pooling_type(self.ctx) == llama_cpp.LLAMA_POOLING_TYPE_NONE:
            llama_cpp.llama_free(self.ctx)
            raise EmbeddingError(f"model {spec.name!r} has no pooling (its GGUF says none); "
                                 "unmark `embedding` to pool it by the mean")
        self.n_ctx = spec.context_size
        self.n_embd = llama_cpp.llama_model_n_embd(model_ptr)
        self.mem = llama_cpp.llama_get_memory(self.ctx)
        self.batch = llama_cpp.llama_batch_init(self.n_ctx, 0, 1)
        self.lock = threading.Lock()
        log.info("embedding context created", extra={
            "model": spec.name, "n_embd": self.n_embd,
            "pooling": int(llama_cpp.llama_pooling_type(self.ctx))})

    def embed(self, texts: Sequence[list[int]], deadline: float | None = None,
              stop: Callable[[], bool] | None = None) -> list[list[float]]:
        """One unit vector per tokenized text, in order. Between texts it stops past
        ``deadline`` (``time.monotonic()``; code ``timeout``) or when ``stop()`` says
        so (code ``cancelled``)."""
        with self.lock:
            vectors = []
            for tokens in texts:
                if self.ctx is None:
                    raise EmbeddingError("the engine is closed")
                if deadline is not None and time.monotonic() > deadline:
                    raise EmbeddingError("embedding exceeded the job time limit",
                                         code="timeout")
                if stop is not None and stop():
                    raise EmbeddingError("the job was cancelled", code="cancelled")
                vectors.append(self._one(tokens))
            return vectors

    def _one(self, tokens: list[int]) -> list[float]:
        if not tokens:
            raise EmbeddingError("a text to embed has no tokens")
        if len(tokens) > self.n_ctx:
            raise EmbeddingError(f"a text of {len(tokens)} tokens does not fit the context "
                                 f"({self.n_ctx} tokens)", code="context_length_exceeded")
        llama_cpp.llama_memory_clear(self.mem, True)
        b = self.batch
        for i, token in enumerate(tokens):
            b.token[i] = token
            b.pos[i] = i
            b.n_seq_id[i] = 1
            b.seq_id[i][0] = 0
            b.logits[i] = 1
        b.n_tokens = len(tokens)
        rc = llama_cpp.llama_decode(self.ctx, b)
        if rc != 0:
            raise EmbeddingError(f"llama_decode failed (code {rc})")
        row = llama_cpp.llama_get_embeddings_seq(self.ctx, 0)
        if not row:
            raise EmbeddingError("llama.cpp returned no pooled embedding")
        vector = [float(x) for x in row[: self.n_embd]]
        norm = math.sqrt(sum(x * x for x in vector)) or 1.0
        return [x / norm for x in vector]

    def close(self) -> None:
        with self.lock:
            if self.ctx is not None:
                llama_cpp.llama_batch_free(self.batch)
                llama_cpp.llama_free(self.ctx)
                self.ctx = None
