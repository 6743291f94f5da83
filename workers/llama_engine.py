"""llama.cpp on a local GGUF file with continuous batching, behind :mod:`workers.engine`.

One resident model, one llama.cpp context with ``slots`` sequences. A single
scheduler thread owns the context: each step it puts into one ``llama_decode``
the next token of every generating sequence plus (at most ``prefill_chunk``
tokens of) the prompts still being read, then samples one token for each
sequence whose input is complete. A long prompt is therefore read a chunk per
step while the other streams keep getting a token per step.

What must always hold, and why:

- **One owner.** Only the scheduler thread touches the context, the batch and
  the KV memory (llama.cpp contexts are not thread-safe), and only it decodes
  (llama.cpp's OpenMP keeps a team of threads per calling thread). A ``submit`` thread
  tokenizes the job's continuation and builds its sampler chain (both only
  read the vocabulary), then appends it to the pending queue (under ``_cv``);
  other threads otherwise only set a job's cancel flag and read its output queue.
  ``close`` waits for ``submit`` calls still preparing before it frees the model.
- **Isolation.** A running job has its own ``seq_id`` and therefore its own KV
  stream of ``context_size`` cells (``kv_unified`` off: llama.cpp splits
  ``n_ctx = context_size * slots`` into one stream per sequence, so no job can
  take another's room), its own sampler chain (:mod:`workers.llama_sampling`),
  stop strings and text assembler, none of them shared. When it ends, for
  whatever reason, its chain is freed and, *before* its seq id goes back to the
  free list (once), its KV stream is either cleared or kept as a prompt cache
  entry (below) whose KV is exactly that of the tokens it lists; a failed job's
  stream is always cleared. A later job on that seq id starts from nothing or
  from a prefix of that entry it is allowed to reuse, never from more.
- **Order.** Waiting jobs start in submission order. A job's pieces are put
  by the one thread that generates them, in order; the end marker is put last,
  after the outcome is complete.
- **Every job ends once.** Whatever happens (stop, length, cancel, deadline,
  a failed decode, an exception, ``close``) :meth:`_Job.finish` runs exactly
  once, so ``pieces()`` always ends. A failed ``llama_decode`` is retried one
  sequence at a time so only the sequence that cannot be decoded fails; an
  exception in a step fails the sequences of that step, and the scheduler goes
  on. A caller that stops reading ``pieces()`` early cancels its generation.

llama.cpp splits a batch into micro-batches (one forward pass each); with one
KV stream per sequence it puts only *consecutive* seq ids into one, so the
batch is laid out in seq-id order and a new job takes the lowest free id.
Flash attention is left to llama.cpp ("auto": on for CPU, where it makes a
4-sequence step ~15% cheaper than without).

**The prompt cache** (registry ``prompt_cache``, on by default; bookkeeping in
:mod:`workers.prompt_cache`). A job that ends (stop, length, cancel, timeout,
``close``) leaves its KV in its stream, as an entry listing the tokens it read in
*whole prefill chunks* from the start of its reading (0, or the template head's
end), tagged with its tenant and conversation; the rest (a last partial chunk,
the answer) is dropped from the stream. A new job takes the free seq id whose
entry shares the longest *usable* prefix with its prompt (same tenant; another
tenant's only up to a shared prefix: the template head or a registry
``shared_prompts`` persona), drops the tail past the match
(``llama_memory_seq_rm(mem, seq, n, -1)``) and reads only the rest, always at
least its last token (its logits start the answer); the match is cut down to a
chunk boundary (``_aligned``), and one under ``MIN_REUSE`` tokens counts as none.
A job with no such slot takes an empty free id (lowest first), else the least
recently used one; the entry it evicts is saved first (``llama_state_seq_get_data``)
into host memory (``prompt_cache_mib``, least recently used out first) if it holds
more than a public prefix, and a job that matches a saved sequence better than any
slot has it restored (``llama_state_seq_set_data``) into the slot it takes.
``forget_conversation`` (a deleted conversation) drops that conversation's entries,
in slots and host memory, and keeps a running job of it from leaving one. What a job
reused is its ``Outcome.cached_tokens``. **Why whole chunks:** llama.cpp's kernels round
differently for batches of different sizes (a generated token is decoded alone, a
prompt a chunk at a time), so KV read another way differs in the last bits and a
greedy answer can flip at a near tie (full reuse changed 7 of 12 two-turn chats
here). Reused that way, a job's KV is what reading its whole prompt gives, chunk
for chunk (prompts are always read in whole chunks, see ``_plan``), and its answer
is the cache-off one; the price is re-reading up to one chunk and the previous
answer each turn.

**The template's head is read once.** Every chat prompt without a system message
of its own opens with the same tokens: the chat template's default system prompt
and the user turn's header (SmolLM2: 24 tokens of a typical 44-token prompt). The
engine reads them once, at load, into one more KV stream of their own, and a job
whose prompt begins with exactly those tokens starts from a copy of that stream
(``llama_memory_seq_cp``) instead of reading them again, as llama-cpp-python's
``Llama`` reuses the prefix its previous call shares. That stream holds the
template's text only, never a job's, and is never written after load; the copy
is the job's own stream, ended like any other. With the cache off, any other
prompt (a system message or persona, tools, a raw completion) is read whole; with
it on, the head is the special case of a cached prefix that is always there and
every tenant may reuse. The registry's ``template_head = false`` turns it off (and
saves the stream).
"""

from __future__ import annotations

import codecs
import ctypes
import heapq
import json
import logging
import queue
import random
import threading
import time
from collections import Counter, deque
from collections.abc import Callable, Iterator
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import llama_cpp
from llama_cpp import Llama

from shared.prompting import PromptRenderer
from shared.registry import ModelSpec
from workers.engine import (
    EmbeddingError,
    Embeddings,
    Engine,
    Generation,
    GenRequest,
    Outcome,
    Piece,
    TokenLogprob,
    TopLogprob,
)
from workers.llama_embed import Embedder
from workers.llama_params import context_params, llama_threads, model_params
from workers.llama_sampling import SamplerChain, chain_seed, logprobs
from workers.prompt_cache import CacheStats, Entry, HostCache, Sharing, tick
from workers.text import TextAssembler

log = logging.getLogger(__name__)

_END = object()  # the last item of a job's output queue
_MAX_TOP_LOGPROBS = 20
_MIN_HEAD = 4  # a shorter template head is not worth a KV stream
_MIN_SAVE = 16  # a cached sequence with fewer tokens than this beyond a public prefix is
#                 not worth saving to host memory when its slot is taken
_MIB = 1024 * 1024


class _Logprobs:
    """Pairs each generated token's log probability with the piece that releases its text.

    A token's text is what it adds to the decoded answer (an incomplete UTF-8
    character counts for the token that completes it), so the token texts of
    an answer no stop string cut add up to the answer.
    """

    def __init__(self, top: int) -> None:
        self.top = min(top, _MAX_TOP_LOGPROBS)
        self._decoder = codecs.getincrementaldecoder("utf-8")("replace")
        self._pending: list[tuple[int, TokenLogprob]] = []  # (end offset, logprob)
        self._fed = 0
        self._released = 0

    def add(self, data: bytes, logprob: float, top: list[TopLogprob]) -> None:
        text = self._decoder.decode(data)
        self._fed += len(text)
        self._pending.append((self._fed, TokenLogprob(text, logprob, list(data), top)))

    def release(self, chars: int) -> list[TokenLogprob]:
        """Logprobs of the tokens whose text is now out, after ``chars`` more were emitted."""
        self._released += chars
        n = 0
        while n < len(self._pending) and self._pending[n][0] <= self._released:
            n += 1
        out = [lp for _, lp in self._pending[:n]]
        del self._pending[:n]
        return out

    def rest(self, stopped: bool) -> list[TokenLogprob]:
        """At the end: the tokens not released yet (with a stop string, only those
        whose text began before the cut)."""
        tail = self._decoder.decode(b"", final=True)
        if tail and self._pending:
            end, last = self._pending[-1]
            self._pending[-1] = (end + len(tail), replace(last, token=last.token + tail))
        if stopped:
            kept = [lp for end, lp in self._pending if end - len(lp.token) < self._released]
        else:
            kept = [lp for _, lp in self._pending]
        self._pending.clear()
        return kept


@dataclass
class _Prepared:
    """What a job needs before it can take a slot (built in ``submit``'s thread)."""

    tokens: list[int]  # prompt + continuation
    budget: int  # tokens it may generate (max_tokens, and the room left in its context)
    chain: SamplerChain
    text: TextAssembler
    logprobs: _Logprobs | None
    cut: bool = False  # a stop string ended the text: nothing held back is released


class _Job(Generation):
    """The caller's handle. Its generation state changes only on the scheduler thread."""

    def __init__(self, request: GenRequest, wake: Callable[[], None],
                 alive: Callable[[], bool]) -> None:
        self.request = request
        prompt_tokens = len(request.prompt.tokens) if request.prompt is not None else None
        self.outcome = Outcome(prompt_tokens=prompt_tokens)
        self.cancelled = False
        self.prepared: _Prepared | None = None
        self.finished = False
        self._out: queue.SimpleQueue[object] = queue.SimpleQueue()
        self._wake = wake
        self._alive = alive

    @property
    def prep(self) -> _Prepared:
        assert self.prepared is not None, "only prepared jobs run"
        return self.prepared

    @property
    def log_extra(self) -> dict[str, str]:
        return {"job_id": self.request.job_id}

    def cancel(self) -> None:
        self.cancelled = True
        self._wake()

    def pieces(self, poll_s: float) -> Iterator[Piece | None]:
        """As the interface says; leaving it before its end (a ``break``, or an
        exception such as Celery's soft time limit in the caller's loop) cancels
        the generation, so no slot keeps generating for nobody."""
        try:
            yield from self._items(poll_s)
        finally:
            if not self.finished:
                self.cancel()

    def _items(self, poll_s: float) -> Iterator[Piece | None]:
        while True:
            try:
                item = self._out.get(timeout=poll_s)
            except queue.Empty:
                if not self._alive() and not self.finished:
                    self._orphaned()
                    return
                yield None
                continue
            if item is _END:
                return
            assert isinstance(item, Piece)
            yield item

    def _orphaned(self) -> None:
        log.error("engine scheduler is gone; ending the generation", extra=self.log_extra)
        self.outcome.finish_reason = "error"
        self.outcome.error = "the generation engine stopped"

    def expired(self, now: float) -> str | None:
        if self.cancelled:
            return "cancelled"
        if now > self.request.deadline:
            return "timeout"
        return None

    def take(self, data: bytes, lp: tuple[float, list[TopLogprob]] | None) -> str | None:
        """One generated token's bytes; returns a finish reason when it ends the job."""
        prep = self.prep
        self.outcome.completion_tokens += 1
        text, prep.cut = prep.text.feed(data)
        released = None
        if prep.logprobs is not None and lp is not None:
            prep.logprobs.add(data, *lp)
            released = prep.logprobs.release(len(text))
            if prep.cut:
                released += prep.logprobs.rest(stopped=True)
        self._out.put(Piece(text, 1, released))
        if prep.cut:
            return "stop"
        if self.outcome.completion_tokens >= prep.budget:
            return "length"
        return None

    def finish(self, reason: str, error: str | None = None) -> None:
        """End the job: release held text, free its chain, complete the outcome. Once."""
        if self.finished:
            return
        self.finished = True
        try:
            self._flush()
        finally:
            if self.prepared is not None:
                self.prepared.chain.free()
            self.outcome.finish_reason = reason
            self.outcome.error = error
            self._out.put(_END)

    def _flush(self) -> None:
        prep = self.prepared
        if prep is None or prep.cut:
            return
        text = prep.text.flush()
        released = None
        if prep.logprobs is not None:
            released = prep.logprobs.release(len(text)) + prep.logprobs.rest(stopped=False)
        if text or released:
            self._out.put(Piece(text, 0, released))


@dataclass(eq=False)
class _Seq:
    """A running job as the scheduler sees it: one KV sequence."""

    job: _Job
    seq_id: int
    order: int  # admission order: who gets the prefill budget first
    tokens: list[int]  # everything this sequence has read or generated
    n_past: int = 0  # tokens of ``tokens`` already in the KV cache
    prefilled: bool = False  # the prompt is read; one token per step from now on
    out_idx: int = -1  # batch index of this step's output, -1 when none
    n_in: int = 0  # tokens it puts into this step's batch
    keep: bool = True  # its KV may stay cached when it ends (false: its conversation went)
    exact: int = 0  # tokens read in whole prefill chunks from a chunk boundary (see _aligned)


class _Model:
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
        # The registry's n_batch is llama.cpp's tokens per decode: here, one token of each
        # slot plus a chunk of prompt. Its threads win over the worker's.
        self.prefill_chunk = spec.n_batch - self.slots if spec.n_batch else prefill_chunk
        if self.prefill_chunk < 1:
            raise ValueError(f"model {spec.name!r}: n_batch ({spec.n_batch}) must exceed "
                             f"slots ({self.slots})")
        self.n_threads = llama_threads(spec, n_threads)
        self._weights = _Model(spec, path)
        self.llm = self._weights.tokenizer
        self.prompter = PromptRenderer(self.llm, spec.chat_template)
        public_head = template_head(self.prompter)
        self.head = public_head if spec.template_head else []
        # what any tenant may reuse of another's cached sequence (see workers.prompt_cache)
        self.shared = [public_head, *shared_prefixes(self.prompter, spec.shared_prompts)]
        self._cv = threading.Condition()
        self._pending: deque[_Job] = deque()
        self._forgets: list[tuple[str, str]] = []  # deleted conversations (tenant, id)
        self._preparing = 0  # submit() calls building a job's tokens and sampler chain
        self._closing = False
        self._embedder: Embedder | None = None  # made by the first embed()
        self._embedder_lock = threading.Lock()
        try:
            self._scheduler = _Scheduler(self)
        except BaseException:
            self._weights.close()
            raise
        self._scheduler.start()
        self.loaded_at = time.time()
        log.info("model loaded", extra={"model": spec.name, "path": str(path),
                                        "slots": self.slots, "n_threads": self.n_threads,
                                        "load_s": round(time.monotonic() - started, 3)})

    def submit(self, request: GenRequest) -> Generation:
        job = _Job(request, self._wake, self._scheduler.is_alive)
        with self._cv:
            if self._closing or not self._scheduler.is_alive():
                job.finish("error", "the engine is closed")
                return job
            self._preparing += 1  # close() waits: preparing reads the vocabulary
        reason: str | None = "error"
        error: str | None = "the job could not be prepared"
        try:
            reason, error = self._prepare(job)
        finally:
            with self._cv:  # queued, or ended, before close() can go on
                if reason is None and not self._closing:
                    self._pending.append(job)
                else:
                    job.finish(reason or "cancelled", error)
                self._preparing -= 1
                self._cv.notify_all()
        return job

    def _prepare(self, job: _Job) -> tuple[str | None, str | None]:
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
        job.prepared = _Prepared(
            tokens=tokens + extra, chain=chain, text=TextAssembler([*p.stop, *req.prompt.stop]),
            budget=min(p.max_tokens, self.context_size - len(tokens) - len(extra)),
            logprobs=_Logprobs(p.top_logprobs) if p.logprobs else None)
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
        (:mod:`workers.llama_embed`); blocks the calling job's thread."""
        tokens = [self.prompter.raw(t).tokens for t in texts]
        vectors = self._embedding_context().embed(tokens, deadline, stop)
        return Embeddings(vectors=vectors, prompt_tokens=sum(len(t) for t in tokens))

    def _embedding_context(self) -> Embedder:
        with self._embedder_lock:
            if self._closing:
                raise EmbeddingError("the engine is closed")
            if self._embedder is None:
                self._embedder = Embedder(self._weights.ptr, self.spec, self.n_threads)
            return self._embedder

    def _wake(self) -> None:
        with self._cv:
            self._cv.notify_all()

    def busy(self) -> int:
        return self._scheduler.running_count

    def forget_conversation(self, tenant: str, conversation_id: str) -> None:
        with self._cv:
            self._forgets.append((tenant, conversation_id))
            self._cv.notify_all()

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
        with self._cv:
            self._closing = True
            self._cv.notify_all()
            while self._preparing:
                self._cv.wait()
        self._scheduler.join(timeout=60)
        if self._scheduler.is_alive():
            log.error("scheduler did not stop; the model stays loaded", extra={"model": self.model})
            return
        with self._embedder_lock:
            if self._embedder is not None:
                self._embedder.close()  # waits for an embedding in progress
        self._weights.close()


def template_head(prompter: PromptRenderer, system: str | None = None) -> list[int]:
    """The tokens every chat prompt without a system message (or with ``system`` as
    its system message) begins with: what two one-turn prompts share. Empty when they
    share under ``_MIN_HEAD`` tokens or the template cannot render. (A user's text that
    merges with the header's last token into another token gives a prompt that does
    not begin with the head: it is read whole.)"""
    opening = [] if system is None else [{"role": "system", "content": system}]
    try:
        a, b = (prompter.render([*opening, {"role": "user", "content": text}]).tokens
                for text in ("a", "b"))
    except Exception:
        log.warning("chat template did not render; no template head", exc_info=True)
        return []
    n = 0
    while n < min(len(a), len(b)) and a[n] == b[n]:
        n += 1
    return list(a[:n]) if n >= _MIN_HEAD else []


def shared_prefixes(prompter: PromptRenderer, texts: list[str]) -> list[list[int]]:
    """The registry's shared system prompts as the token prefixes they open a chat
    prompt with (system message and the user turn's header)."""
    return [head for head in (template_head(prompter, text) for text in texts) if head]


class _Scheduler(threading.Thread):
    """Owns the llama.cpp context; runs every step of every sequence."""

    def __init__(self, engine: LlamaEngine) -> None:
        super().__init__(name=f"llama-{engine.model}", daemon=True)
        self.engine = engine
        self.vocab = engine._weights.vocab
        self.n_vocab = engine._weights.n_vocab
        self.n_batch = engine.prefill_chunk + engine.slots
        # The template head's stream is the one after the slots' (see the module's notes).
        self.head_seq = engine.slots
        sequences = engine.slots + (1 if engine.head else 0)
        self.ctx = self._context(engine, sequences)
        self.n_ctx = llama_cpp.llama_n_ctx(self.ctx)
        self.mem = llama_cpp.llama_get_memory(self.ctx)
        self.batch = llama_cpp.llama_batch_init(self.n_batch, 0, 1)
        self._token, self._pos, self._logits = self.batch.token, self.batch.pos, self.batch.logits
        self._seq_rows = [self.batch.seq_id[i] for i in range(self.n_batch)]
        for i in range(self.n_batch):
            self.batch.n_seq_id[i] = 1
        self._piece_buf = ctypes.create_string_buffer(256)
        self.free_ids = list(range(engine.slots))
        self.running: list[_Seq] = []  # sorted by seq_id
        self.running_count = 0
        self.batch_sizes: Counter[int] = Counter()  # sequences per decode -> decodes
        self._admitted = 0
        self.head: list[int] = []  # the template head as read (run() reads it)
        spec = engine.spec
        self.caching = spec.prompt_cache
        # what each free slot's KV stream holds (None: empty); a running slot's is its job's
        self.kept: list[Entry | None] = [None] * engine.slots
        self.host = HostCache(spec.prompt_cache_mib * _MIB if self.caching else 0)
        self.sharing = Sharing(engine.shared)
        self.stats = CacheStats()
        self.cache_view: dict[str, int] = {}  # what cache_info() shows (set on this thread)
        self._update_view()

    def _context(self, engine: LlamaEngine, sequences: int) -> Any:
        params = context_params(engine.spec, sequences, self.n_batch, engine.n_threads)
        ctx = llama_cpp.llama_init_from_model(engine._weights.ptr, params)
        if not ctx:
            raise RuntimeError("llama.cpp could not create the context")
        per_seq = llama_cpp.llama_n_ctx_seq(ctx)
        if per_seq < engine.context_size:
            llama_cpp.llama_free(ctx)
            raise RuntimeError(f"llama.cpp gives each sequence {per_seq} tokens of context, "
                               f"not {engine.context_size}")
        return ctx

    def _read_head(self, head: list[int]) -> list[int]:
        """Read the template head into its stream, on this thread before its first step;
        the head, or nothing when llama.cpp could not read it (prompts are then read
        whole). Like every decode of this context, on the scheduler thread: read on the
        thread that built the engine, it made every later single-sequence step 1.8 times
        slower here (llama.cpp's OpenMP keeps a team of threads per calling thread)."""
        token, pos, logits, rows = self._token, self._pos, self._logits, self._seq_rows
        try:
            for start in range(0, len(head), self.n_batch):
                chunk = head[start:start + self.n_batch]
                for i, t in enumerate(chunk):
                    token[i], pos[i], logits[i] = t, start + i, 0
                    rows[i][0] = self.head_seq
                logits[len(chunk) - 1] = 1
                self.batch.n_tokens = len(chunk)
                rc = self._decode(len(chunk))
                if rc != 0:
                    raise RuntimeError(f"llama_decode returned {rc}")
        except Exception as exc:
            log.warning("could not read the template head; prompts are read whole",
                        extra={"error": str(exc), "model": self.engine.model})
            llama_cpp.llama_memory_seq_rm(self.mem, self.head_seq, -1, -1)
            return []
        return head

    # The loop

    def run(self) -> None:
        try:
            self.head = self._read_head(self.engine.head)
            while self._round():
                pass
        except BaseException:
            log.exception("scheduler stopped", extra={"model": self.engine.model})
        finally:
            self._shutdown()

    def _round(self) -> bool:
        if not self._wait_for_work():
            return False
        try:
            self._forget()
            self._expire_waiting()
            self._admit()
            self._expire_running()
            if self.running:
                self._run_step(self._plan())
        except Exception as exc:
            log.exception("engine step failed", extra={"model": self.engine.model})
            for seq in list(self.running):
                self._end(seq, "error", f"engine step failed: {exc}")
        return True

    def _wait_for_work(self) -> bool:
        engine = self.engine
        with engine._cv:
            while not (engine._closing or engine._pending or engine._forgets
                       or self.running):
                engine._cv.wait()
            return not engine._closing

    def _expire_waiting(self) -> None:
        now = time.monotonic()
        with self.engine._cv:
            waiting = self.engine._pending
            ended = [(job, job.expired(now)) for job in waiting]
            for job, reason in ended:
                if reason is not None:
                    waiting.remove(job)
                    job.finish(reason)

    def _admit(self) -> None:
        with self.engine._cv:
            while self.engine._pending and self.free_ids:
                job = self.engine._pending.popleft()
                try:
                    self._start(job)
                except Exception as exc:  # it left the queue: it must end here
                    log.exception("sequence could not start", extra=job.log_extra)
                    job.finish("error", f"could not start: {exc}")

    def _start(self, job: _Job) -> None:
        tokens = job.prep.tokens
        seq_id, n_past, hit = self._place(tokens, job.request.tenant)
        seq = _Seq(job, seq_id, self._admitted, list(tokens), n_past=n_past, exact=n_past)
        self.free_ids.remove(seq_id)
        heapq.heapify(self.free_ids)
        self._admitted += 1
        self.running.append(seq)
        self.running.sort(key=lambda s: s.seq_id)
        self.running_count = len(self.running)
        job.outcome.cached_tokens = min(n_past, job.outcome.prompt_tokens or n_past)
        self.stats.hits += hit
        self.stats.cached_tokens += n_past
        self.stats.read_tokens += len(tokens) - n_past
        self._update_view()
        log.debug("sequence started", extra={**job.log_extra, "seq_id": seq_id,
                                             "prompt_tokens": len(tokens),
                                             "cached_tokens": n_past})

    # The prompt cache (see workers.prompt_cache and the module's notes)

    def _place(self, tokens: list[int], scope: str) -> tuple[int, int, bool]:
        """The free seq id a job starts on, how many of its tokens that stream holds
        already, and whether they came from an earlier job's cache (not only the head).
        Picks the cached sequence sharing the longest usable prefix: a free slot's
        (its tail past the match dropped), else one saved in host memory (restored into
        the slot it evicts), else the template head's copy, else nothing."""
        head = self.head
        head_n = len(head) if head and len(tokens) > len(head) and \
            tokens[:len(head)] == head else 0
        slot, slot_n = self._best_kept(tokens, scope)
        slot_n = self._aligned(slot_n, head_n)
        saved, saved_n = self.host.best(tokens, scope, self.sharing)
        saved_n = self._aligned(saved_n, head_n)
        if slot is not None and slot_n > head_n and slot_n >= saved_n:
            kept = self._trim(slot, slot_n)
            if kept:
                return slot, kept, True
        seq_id = self._victim()
        self._evict(seq_id)
        if saved is not None and saved_n > head_n and self._restore(saved, seq_id):
            kept = self._trim(seq_id, saved_n)
            if kept:
                return seq_id, kept, True
        if head_n:
            # its stream becomes a copy of the head's (made before the next decode)
            llama_cpp.llama_memory_seq_cp(self.mem, self.head_seq, seq_id, -1, -1)
        return seq_id, head_n, False

    def _aligned(self, n: int, start: int) -> int:
        """The most of ``n`` usable cached tokens a job may take so that it reads the rest
        as it would read its whole prompt: from ``start`` (the template head's end, or 0)
        in whole ``prefill_chunk`` steps. 0 when that is nothing beyond ``start``."""
        chunk = self.engine.prefill_chunk
        aligned = start + (n - start) // chunk * chunk if n > start else 0
        return aligned if aligned > start else 0

    def _best_kept(self, tokens: list[int], scope: str) -> tuple[int | None, int]:
        found, most = None, 0
        for seq_id in sorted(self.free_ids):
            entry = self.kept[seq_id]
            if entry is not None:
                n = self.sharing.usable(tokens, scope, entry)
                if n > most:
                    found, most = seq_id, n
        return found, most

    def _victim(self) -> int:
        """The free seq id whose cached sequence is worth least: an empty one (lowest id,
        which keeps the batch's seq ids together), else the least recently used."""
        empty = [i for i in self.free_ids if self.kept[i] is None]
        if empty:
            return min(empty)
        return min(self.free_ids, key=lambda i: self.kept[i].used)  # type: ignore[union-attr]

    def _trim(self, seq_id: int, n: int) -> int:
        """Keep the first ``n`` tokens of the slot's cached sequence for a new job (the
        rest saved to host memory first when worth it); the tokens kept (0: it failed
        and the stream is empty)."""
        entry = self.kept[seq_id]
        if entry is not None and len(entry.tokens) - n >= _MIN_SAVE:
            self._save(seq_id, entry)
        self.kept[seq_id] = None
        if llama_cpp.llama_memory_seq_rm(self.mem, seq_id, n, -1):
            return n
        llama_cpp.llama_memory_seq_rm(self.mem, seq_id, -1, -1)
        return 0

    def _evict(self, seq_id: int) -> None:
        """Empty a free slot's stream, its cached sequence saved to host memory first."""
        entry = self.kept[seq_id]
        if entry is not None:
            self._save(seq_id, entry)
            self.kept[seq_id] = None
        llama_cpp.llama_memory_seq_rm(self.mem, seq_id, -1, -1)

    def _save(self, seq_id: int, entry: Entry) -> None:
        """Copy a cached sequence into host memory, if it holds more than a public prefix
        and fits the budget."""
        if len(entry.tokens) - self.sharing.limit(entry.tokens) < _MIN_SAVE:
            return
        size = int(llama_cpp.llama_state_seq_get_size(self.ctx, seq_id))
        if not self.host.fits(size):
            return
        buf = (ctypes.c_uint8 * size)()
        written = int(llama_cpp.llama_state_seq_get_data(self.ctx, buf, size, seq_id))
        if written <= 0:
            return
        saved = Entry(list(entry.tokens), entry.scope, entry.conversation, entry.used,
                      state=bytes(buf)[:written])
        if self.host.put(saved):
            self.stats.saved += 1

    def _restore(self, entry: Entry, seq_id: int) -> bool:
        """Load a saved sequence into the (empty) slot; it leaves host memory."""
        self.host.take(entry)
        state = entry.state or b""
        buf = (ctypes.c_uint8 * len(state)).from_buffer_copy(state)
        if llama_cpp.llama_state_seq_set_data(self.ctx, buf, len(state), seq_id) <= 0:
            log.warning("a saved sequence could not be restored; the prompt is read",
                        extra={"model": self.engine.model, "seq_id": seq_id})
            llama_cpp.llama_memory_seq_rm(self.mem, seq_id, -1, -1)
            return False
        self.kept[seq_id] = Entry(entry.tokens, entry.scope, entry.conversation)
        self.stats.restored += 1
        return True

    def _forget(self) -> None:
        """Drop what is cached of deleted conversations: free slots, host memory, and
        the running jobs of those conversations (their KV is not kept when they end)."""
        with self.engine._cv:
            gone, self.engine._forgets = self.engine._forgets, []
        for scope, conversation in gone:
            for seq_id in self.free_ids:
                entry = self.kept[seq_id]
                if entry is not None and entry.of(scope, conversation):
                    llama_cpp.llama_memory_seq_rm(self.mem, seq_id, -1, -1)
                    self.kept[seq_id] = None
            self.host.forget(scope, conversation)
            for seq in self.running:
                req = seq.job.request
                if req.tenant == scope and req.conversation_id == conversation:
                    seq.keep = False
        if gone:
            self._update_view()

    def _keep(self, seq: _Seq, reason: str) -> None:
        """A job's stream when it ends: kept as a cache entry of the tokens it read in
        whole prefill chunks (the rest of its KV, the answer included, is dropped), or
        emptied (cache off, a failed job, a deleted conversation, nothing read so)."""
        req = seq.job.request
        n = min(seq.exact, seq.n_past)
        if n <= len(self.head) and seq.tokens[:len(self.head)] == self.head:
            n = 0  # nothing beyond the template head, which has its own stream
        if self.caching and reason != "error" and seq.keep and n > 0:
            self.kept[seq.seq_id] = Entry(seq.tokens[:n], req.tenant, req.conversation_id,
                                          tick())
            llama_cpp.llama_memory_seq_rm(self.mem, seq.seq_id, n, -1)
        else:
            self.kept[seq.seq_id] = None
            llama_cpp.llama_memory_seq_rm(self.mem, seq.seq_id, -1, -1)

    def _update_view(self) -> None:
        slots = [e for e in self.kept if e is not None]
        stats = self.stats
        self.cache_view = {
            "prompt_cache_slots": len(slots),
            "prompt_cache_tokens": sum(len(e.tokens) for e in slots) + self.host.tokens,
            "prompt_cache_host_entries": len(self.host),
            "prompt_cache_host_bytes": self.host.bytes,
            "prompt_cache_hits": stats.hits,
            "prompt_cache_cached_tokens": stats.cached_tokens,
            "prompt_cache_read_tokens": stats.read_tokens,
            "prompt_cache_saved": stats.saved,
            "prompt_cache_restored": stats.restored,
        }

    def _expire_running(self) -> None:
        now = time.monotonic()
        for seq in list(self.running):
            reason = seq.job.expired(now)
            if reason is not None:
                self._end(seq, reason)

    # One step

    def _plan(self) -> list[_Seq]:
        """Who puts how many tokens into this step: one each for the generating
        sequences, the prefill chunk to the prompts being read, oldest first. A prompt
        is read in whole chunks (its last one may be shorter): what is left of the
        budget after an older prompt's last chunk waits for the next step rather than
        start a part chunk, so every prompt is read in the same chunks however many
        are read at once, and what it read is reusable (see the prompt cache)."""
        chunk = self.engine.prefill_chunk
        budget = chunk
        for seq in sorted(self.running, key=lambda s: s.order):
            if seq.prefilled:
                seq.n_in = 1
            else:
                left = len(seq.tokens) - seq.n_past
                seq.n_in = min(left, budget)
                if seq.n_in < min(left, chunk):
                    seq.n_in = 0  # a part chunk: next step
                budget -= seq.n_in
        return [seq for seq in self.running if seq.n_in > 0]

    def _run_step(self, step: list[_Seq]) -> None:
        n = self._fill(step)
        self.batch_sizes[len(step)] += 1  # sequences in this decode (read by the heartbeat)
        rc = self._decode(n)
        if rc != 0:
            self._recover(step, rc)
            return
        chunk = self.engine.prefill_chunk
        for seq in step:
            if not seq.prefilled and seq.exact == seq.n_past and seq.n_in == chunk:
                seq.exact += chunk  # a whole chunk, from a chunk boundary
            seq.n_past += seq.n_in
            if seq.out_idx >= 0:
                seq.prefilled = True
                self._sample(seq)

    def _fill(self, step: list[_Seq]) -> int:
        """Write the step into the one reusable batch (in seq-id order); returns its size."""
        token, pos, logits, rows = self._token, self._pos, self._logits, self._seq_rows
        n = 0
        for seq in step:
            start, sid, tokens = seq.n_past, seq.seq_id, seq.tokens
            for i in range(start, start + seq.n_in):
                token[n] = tokens[i]
                pos[n] = i
                logits[n] = 0
                rows[n][0] = sid
                n += 1
            complete = start + seq.n_in == len(tokens)
            seq.out_idx = n - 1 if complete else -1
            if complete:
                logits[n - 1] = 1
        self.batch.n_tokens = n
        return n

    def _decode(self, n_tokens: int) -> int:
        """``llama_decode`` on the batch's first ``n_tokens`` (a seam for fault tests)."""
        return int(llama_cpp.llama_decode(self.ctx, self.batch))

    def _recover(self, step: list[_Seq], rc: int) -> None:
        """A failed decode: undo what it left in the cache, then find who cannot be decoded."""
        log.warning("llama_decode failed", extra={"rc": rc, "sequences": len(step),
                                                  "model": self.engine.model})
        for seq in step:
            llama_cpp.llama_memory_seq_rm(self.mem, seq.seq_id, seq.n_past, -1)
        if len(step) == 1:
            self._end(step[0], "error", f"llama_decode failed (code {rc})")
            return
        for seq in step:  # one sequence at a time: only the one that fails ends
            if seq in self.running:
                self._run_step([seq])

    def _sample(self, seq: _Seq) -> None:
        job = seq.job
        try:
            token = llama_cpp.llama_sampler_sample(job.prep.chain.ptr, self.ctx, seq.out_idx)
            if llama_cpp.llama_vocab_is_eog(self.vocab, token):
                self._end(seq, "stop")
                return
            reason = job.take(self._piece(token), self._logprobs(seq, token))
        except Exception as exc:
            log.exception("sampling failed", extra=job.log_extra)
            self._end(seq, "error", f"sampling failed: {exc}")
            return
        if reason is not None:
            self._end(seq, reason)
        else:
            seq.tokens.append(token)

    def _piece(self, token: int) -> bytes:
        buf = self._piece_buf
        n = llama_cpp.llama_token_to_piece(self.vocab, token, buf, len(buf), 0, False)
        if n < 0:
            buf = ctypes.create_string_buffer(-n)
            n = llama_cpp.llama_token_to_piece(self.vocab, token, buf, len(buf), 0, False)
        return buf.raw[:n]

    def _logprobs(self, seq: _Seq, token: int) -> tuple[float, list[TopLogprob]] | None:
        lp = seq.job.prep.logprobs
        if lp is None:
            return None
        row = llama_cpp.llama_get_logits_ith(self.ctx, seq.out_idx)
        value, best = logprobs(row, self.n_vocab, token, lp.top)
        return value, [TopLogprob(self._text(t), v, list(self._piece(t))) for t, v in best]

    def _text(self, token: int) -> str:
        return self._piece(token).decode("utf-8", errors="replace")

    def _end(self, seq: _Seq, reason: str, error: str | None = None) -> None:
        """Keep the sequence's KV stream as a cache entry or clear it, then free its seq
        id (once: an id is never shared, and never given to a job before its stream
        holds nothing but that entry) and end its job."""
        try:
            if seq in self.running:
                self.running.remove(seq)
                self.running_count = len(self.running)
                self._keep(seq, reason)
                heapq.heappush(self.free_ids, seq.seq_id)
                self._update_view()
        finally:
            seq.job.finish(reason, error)
        log.debug("sequence ended", extra={**seq.job.log_extra, "seq_id": seq.seq_id,
                                           "finish_reason": reason})

    def _shutdown(self) -> None:
        """End every job (cancelled when closing, error otherwise) and free the context."""
        closing = self.engine._closing
        reason, error = ("cancelled", None) if closing else ("error", "the engine stopped")
        for seq in list(self.running):
            self._end(seq, reason, error)
        with self.engine._cv:
            waiting = list(self.engine._pending)
            self.engine._pending.clear()
        for job in waiting:
            job.finish(reason, error)
        llama_cpp.llama_batch_free(self.batch)
        llama_cpp.llama_free(self.ctx)
