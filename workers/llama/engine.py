"""The llama engine: one resident GGUF model generating for several jobs at once
(the package's notes say what must hold). ``submit`` prepares a job on the caller's
thread and puts it in line; the :class:`~workers.llama.scheduler.Scheduler` thread runs it.
"""

from __future__ import annotations

import json
import logging
import random
import threading
import time
from collections.abc import Callable
from pathlib import Path

import llama_cpp

from shared.prompting import PromptRenderer
from shared.registry import ModelSpec
from workers.engine import EmbeddingError, Embeddings, Engine, Generation, GenRequest
from workers.llama.disk_cache import folder_for
from workers.llama.embed import Embedder
from workers.llama.head import shared_prefixes, template_head
from workers.llama.job import Job, Prepared
from workers.llama.logprobs import LogprobTrail
from workers.llama.params import llama_threads
from workers.llama.pending import PendingWork
from workers.llama.sampling import SamplerChain, chain_seed
from workers.llama.scheduler import Layout, Scheduler
from workers.llama.weights import Weights
from workers.text import TextAssembler

log = logging.getLogger(__name__)


class LlamaEngine(Engine):
    """Generates for up to ``slots`` jobs at once on one resident GGUF model.

    ``slots`` defaults to the registry's; ``n_threads`` to every core this
    process may use. ``prefill_chunk`` caps the prompt tokens read per step, so
    it bounds how long the generating streams wait for their next token while
    a prompt is read (on a 2-core CPU a prompt token costs about a third of a
    one-token step, and the cost per token hardly falls above 32 tokens, so 64
    keeps those waits near 0.2 s at no loss of throughput; a GPU wants more). A
    registry ``n_batch`` sets it instead: ``n_batch - slots``.
    """

    context_size: int
    prompter: PromptRenderer

    def __init__(self, spec: ModelSpec, path: Path, n_threads: int | None = None, *,
                 slots: int | None = None, prefill_chunk: int = 64) -> None:
        started = time.monotonic()
        self.spec = spec
        self.model = spec.name
        self.slots = slots or spec.slots
        self.context_size = spec.context_size
        self.keeps_prompts = spec.prompt_cache
        # The registry's n_batch is llama.cpp's tokens per decode: here, one token of each
        # slot plus a chunk of prompt. Its threads win over the worker's.
        self.prefill_chunk = spec.n_batch - self.slots if spec.n_batch else prefill_chunk
        if self.prefill_chunk < 1:
            raise ValueError(f"model {spec.name!r}: n_batch ({spec.n_batch}) must exceed "
                             f"slots ({self.slots})")
        self.n_threads = llama_threads(spec, n_threads)
        self._weights = Weights(spec, path)
        self.llm = self._weights.tokenizer
        self.prompter = PromptRenderer(self.llm, spec.chat_template)
        public_head = template_head(self.prompter)
        self.head = public_head if spec.template_head else []
        # what any tenant may reuse of another's cached sequence (see workers.llama.cache)
        self.shared = [public_head, *shared_prefixes(self.prompter, spec.shared_prompts)]
        self._pending: PendingWork[Job] = PendingWork()
        self._embedder: Embedder | None = None  # made by the first embed()
        self._embedder_lock = threading.Lock()
        try:
            self._scheduler = Scheduler(
                Layout(spec, self.slots, self.prefill_chunk, self.n_threads, self.head,
                       self.shared, self._disk_folder(path)), self._weights, self._pending)
        except BaseException:
            self._weights.close()
            raise
        self._scheduler.start()
        self.loaded_at = time.time()
        log.info("model loaded", extra={"model": spec.name, "path": str(path),
                                        "slots": self.slots, "n_threads": self.n_threads,
                                        "load_s": round(time.monotonic() - started, 3)})

    def _disk_folder(self, path: Path) -> Path | None:
        """The prompt cache's disk folder for this model file, llama.cpp and KV layout
        (a state saved under another is never offered to this one)."""
        spec = self.spec
        if not (spec.prompt_cache and spec.prompt_cache_disk_mib):
            return None
        stat = path.stat()
        identity = {"file": path.name, "size": stat.st_size, "llama_cpp": llama_cpp.__version__,
                    "load": spec.llama_kwargs(), "context_size": spec.context_size,
                    "prefill_chunk": self.prefill_chunk, "head": self.head}
        return folder_for(Path(spec.prompt_cache_dir).expanduser(), spec.name, identity)

    def submit(self, request: GenRequest) -> Generation:
        job = Job(request, self._pending.wake, self._scheduler.is_alive)
        # close() waits for a job being prepared: preparing reads the vocabulary
        if not self._scheduler.is_alive() or not self._pending.begin():
            job.finish("error", "the engine is closed")
            return job
        reason: str | None = "error"
        error: str | None = "the job could not be prepared"
        try:
            reason, error = self._prepare(job)
        finally:  # in line, or ended, before close() can go on
            self._pending.settle(job, reason, error)
        return job

    def _prepare(self, job: Job) -> tuple[str | None, str | None]:
        """Tokens, budget and sampler chain; or why the job ends before it starts."""
        req = job.request
        if req.prompt is None or not req.prompt.tokens:
            return "error", "the llama engine needs a tokenized, non-empty prompt"
        try:
            tokens = list(req.prompt.tokens)
            extra = self._tokenize(req.continuation)
            if len(tokens) + len(extra) > self.context_size:
                return "error", (f"the prompt ({len(tokens) + len(extra)} tokens) does not fit "
                                 f"the context ({self.context_size} tokens)")
            chain = self._chain(req, extra)
        except Exception as exc:
            log.warning("generation refused", extra={**job.log_extra, "error": str(exc)})
            return "error", str(exc)
        p = req.params
        job.prepared = Prepared(
            tokens=tokens + extra, chain=chain, text=TextAssembler([*p.stop, *req.prompt.stop]),
            budget=min(p.max_tokens, self.context_size - len(tokens) - len(extra)),
            logprobs=LogprobTrail(p.top_logprobs) if p.logprobs else None)
        return ("length", None) if job.prepared.budget <= 0 else (None, None)

    def _tokenize(self, text: str) -> list[int]:
        if not text:
            return []
        return self.llm.tokenize(text.encode("utf-8"), add_bos=False, special=False)

    def _chain(self, req: GenRequest, replay: list[int]) -> SamplerChain:
        seed = chain_seed(req.params.seed, random.getrandbits(32))
        chain = SamplerChain(req.params, self._weights.vocab, self._weights.n_vocab, seed)
        try:
            chain.replay(replay)
        except BaseException:
            chain.free()
            raise
        return chain

    def embed(self, texts: list[str], deadline: float | None = None,
              stop: Callable[[], bool] | None = None) -> Embeddings:
        """Pooled, unit-length embeddings from a second context on the same weights
        (:mod:`workers.llama.embed`); blocks the calling job's thread."""
        tokens = [self.prompter.raw(t).tokens for t in texts]
        vectors = self._embedding_context().embed(tokens, deadline, stop)
        return Embeddings(vectors=vectors, prompt_tokens=sum(len(t) for t in tokens))

    def _embedding_context(self) -> Embedder:
        with self._embedder_lock:
            if self._pending.closing:
                raise EmbeddingError("the engine is closed")
            if self._embedder is None:
                self._embedder = Embedder(self._weights.ptr, self.spec, self.n_threads)
            return self._embedder

    def busy(self) -> int:
        return self._scheduler.running_count

    def forget_conversation(self, tenant: str, conversation_id: str) -> None:
        self._pending.forget(tenant, conversation_id)

    def cache_info(self) -> dict[str, int]:
        return dict(self._scheduler.cache_view)

    def batch_sizes(self) -> dict[int, int]:
        return dict(self._scheduler.batch_sizes)

    def info(self) -> dict[str, str]:
        """What llama.cpp made of the load options, read back from its context (it
        rounds each job's context up to a multiple of 256), and what the registry asked."""
        ctx = self._scheduler.ctx
        return {
            "loaded_at": str(self.loaded_at),
            "n_ctx": str(llama_cpp.llama_n_ctx_seq(ctx)),
            "n_ctx_total": str(llama_cpp.llama_n_ctx(ctx)),
            "n_batch": str(llama_cpp.llama_n_batch(ctx)),
            "n_ubatch": str(llama_cpp.llama_n_ubatch(ctx)),
            "n_threads": str(llama_cpp.llama_n_threads(ctx)),
            "n_threads_batch": str(llama_cpp.llama_n_threads_batch(ctx)),
            "slots": str(self.slots), "prefill_chunk": str(self.prefill_chunk),
            "template_head_tokens": str(len(self._scheduler.head)),
            "kv_unified": "false",
            "load_options": json.dumps(self.spec.llama_kwargs(), sort_keys=True),
        }

    def close(self) -> None:
        self._pending.close()
        self._scheduler.join(timeout=60)
        if self._scheduler.is_alive():
            log.error("scheduler did not stop; the model stays loaded", extra={"model": self.model})
            return
        with self._embedder_lock:
            if self._embedder is not None:
                self._embedder.close()  # waits for an embedding in progress
        self._weights.close()

