"""Embeddings on the worker's resident GGUF model: a second llama.cpp context on the
same weights.

The generating context (:mod:`workers.llama.scheduler`) outputs logits, not
embeddings, and its sequences belong to the scheduler thread; so embedding jobs
use a context of their own. What holds, and why:

- **The weights are shared, not loaded twice**: the context is made from the
  model the engine already holds (llama.cpp allows several contexts per model;
  the model is read-only). It is created on the first embedding job (a worker
  that never embeds pays nothing) and freed before the weights.
- **One pack of texts at a time, under a lock**: llama.cpp contexts are not
  thread-safe and the jobs of a worker run in several threads. Texts are decoded
  in packs of at most ``context_size`` tokens and ``MAX_SEQS`` texts, each text
  its own sequence, a pack in one micro-batch (``n_ubatch`` = ``context_size``):
  pooling needs every token of a text. Sequences attend only to themselves, and
  the memory is cleared before each pack, so nothing of one text reaches another
  (a text's vector is the same alone or packed, to float rounding).
- **Each decode on a thread that ends with it**: the job's thread lives on in
  Celery's pool, and llama.cpp's OpenMP keeps a team of threads for every thread
  that has computed; while such a second team lasted, every later step of the
  generating engine ran about 1.8 times slower (measured on 2 cores: 184 tok/s to
  99-110 after one embedding job, back to 171 once the thread ended).
- **Pooling**: a model marked ``embedding`` in the registry is pooled as its GGUF
  says (CLS, mean, last...); any other by the mean of its tokens' last hidden
  states. The vectors are L2-normalised (unit length), as OpenAI's are.
"""

from __future__ import annotations

import logging
import math
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from typing import Any

import llama_cpp

from shared.registry import ModelSpec
from workers.engine import EmbeddingError
from workers.llama.params import context_params

log = logging.getLogger(__name__)


MAX_SEQS = 64  # texts decoded together in one llama_decode (llama.cpp allows 256)


def packs(texts: Sequence[list[int]], n_ctx: int, max_seqs: int = MAX_SEQS
          ) -> Iterator[list[int]]:
    """Indexes of ``texts`` in order, grouped so each group's tokens fit ``n_ctx``
    (one decode) and it has at most ``max_seqs`` texts."""
    group: list[int] = []
    used = 0
    for i, tokens in enumerate(texts):
        if group and (used + len(tokens) > n_ctx or len(group) == max_seqs):
            yield group
            group, used = [], 0
        group.append(i)
        used += len(tokens)
    if group:
        yield group


class Embedder:
    """A pooled-embeddings context on an already loaded model (``model_ptr``)."""

    def __init__(self, model_ptr: Any, spec: ModelSpec, n_threads: int) -> None:
        params = context_params(spec, 1, spec.context_size, n_threads)
        params.n_ubatch = spec.context_size  # a whole pack of texts in one micro-batch
        params.n_seq_max = MAX_SEQS
        params.kv_unified = True  # the texts of a pack share context_size cells
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
        """One unit vector per tokenized text, in order. Texts are decoded a pack at a
        time (:func:`packs`); between packs it stops past ``deadline``
        (``time.monotonic()``; code ``timeout``) or when ``stop()`` says so (code
        ``cancelled``)."""
        for tokens in texts:
            if not tokens:
                raise EmbeddingError("a text to embed has no tokens")
            if len(tokens) > self.n_ctx:
                raise EmbeddingError(f"a text of {len(tokens)} tokens does not fit the "
                                     f"context ({self.n_ctx} tokens)",
                                     code="context_length_exceeded")
        with self.lock:
            vectors: list[list[float]] = []
            for group in packs(texts, self.n_ctx):
                if self.ctx is None:
                    raise EmbeddingError("the engine is closed")
                if deadline is not None and time.monotonic() > deadline:
                    raise EmbeddingError("embedding exceeded the job time limit",
                                         code="timeout")
                if stop is not None and stop():
                    raise EmbeddingError("the job was cancelled", code="cancelled")
                vectors += self._pack([texts[i] for i in group])
            return vectors

    def _pack(self, texts: list[list[int]]) -> list[list[float]]:
        """One decode of these texts, text ``k`` as sequence ``k``; their unit vectors."""
        llama_cpp.llama_memory_clear(self.mem, True)
        b = self.batch
        n = 0
        for seq, tokens in enumerate(texts):
            for pos, token in enumerate(tokens):
                b.token[n] = token
                b.pos[n] = pos
                b.n_seq_id[n] = 1
                b.seq_id[n][0] = seq
                b.logits[n] = 1
                n += 1
        b.n_tokens = n
        rc = self._decode_apart()
        if rc != 0:
            raise EmbeddingError(f"llama_decode failed (code {rc})")
        return [self._vector(seq) for seq in range(len(texts))]

    def _decode_apart(self) -> int:
        """``llama_decode`` of the batch on a thread of its own that ends with it (see the
        module's notes); -1 when the call itself raised."""
        codes: list[int] = []

        def decode() -> None:
            codes.append(int(llama_cpp.llama_decode(self.ctx, self.batch)))

        thread = threading.Thread(target=decode, name="chatq-embed-decode", daemon=True)
        thread.start()
        thread.join()
        return codes[0] if codes else -1

    def _vector(self, seq: int) -> list[float]:
        row = llama_cpp.llama_get_embeddings_seq(self.ctx, seq)
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
