"""llama.cpp on a local GGUF file with continuous batching, behind :mod:`workers.engine`.

Modules: :mod:`~workers.llama.engine` (the engine: submit, embed, close),
:mod:`~workers.llama.scheduler` (the thread that owns the context),
:mod:`~workers.llama.pending` (the line of jobs between them),
:mod:`~workers.llama.job` (a job's handle), :mod:`~workers.llama.sampling` (its
sampler chain), :mod:`~workers.llama.logprobs`, :mod:`~workers.llama.head` (the
template head), :mod:`~workers.llama.cache` (the prompt cache's bookkeeping),
:mod:`~workers.llama.embed` (embeddings), :mod:`~workers.llama.params` (load options)
and :mod:`~workers.llama.weights`.

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
  read the vocabulary), then puts it in line (:class:`~workers.llama.pending.PendingWork`,
  the one lock);
  other threads otherwise only set a job's cancel flag and read its output queue.
  ``close`` waits for ``submit`` calls still preparing before it frees the model.
- **Isolation.** A running job has its own ``seq_id`` and therefore its own KV
  stream of ``context_size`` cells (``kv_unified`` off: llama.cpp splits
  ``n_ctx = context_size * slots`` into one stream per sequence, so no job can
  take another's room), its own sampler chain (:mod:`workers.llama.sampling`),
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
  a failed decode, an exception, ``close``) :meth:`Job.finish` runs exactly
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
:mod:`workers.llama.cache`). A job that ends (stop, length, cancel, timeout,
``close``) leaves its KV in its stream, as an entry listing the tokens it read in
*whole prefill chunks* from the start of its reading (0, or the template head's
end), tagged with its tenant and conversation; the rest (a last partial chunk,
the answer) is dropped from the stream. A new job takes the free seq id whose
entry shares the longest *usable* prefix with its prompt (same tenant; another
tenant's only up to a shared prefix: the template head or a registry
``shared_prompts`` persona), drops the tail past the match
(``llama_memory_seq_rm(mem, seq, n, -1)``) and reads only the rest, always at
least its last token (its logits start the answer); the match is cut down to a
chunk boundary (``Scheduler._aligned``), and one under ``MIN_REUSE`` tokens counts as none.
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
for chunk (prompts are always read in whole chunks, see ``Scheduler._plan``), and its answer
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

from workers.llama.engine import LlamaEngine
from workers.llama.head import template_head

__all__ = ["LlamaEngine", "template_head"]
