"""The scheduler thread: the one owner of the llama.cpp context (see the package's notes).

Each step puts into one ``llama_decode`` the next token of every generating sequence
plus a prefill chunk of the prompts being read, then samples one token for each
sequence whose input is complete. Jobs come from :class:`~workers.llama.pending.PendingWork`;
the prompt cache's bookkeeping is :mod:`workers.llama.cache`.
"""

from __future__ import annotations

import ctypes
import heapq
import logging
import threading
import time
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import llama_cpp

from shared.registry import ModelSpec
from workers.engine import TopLogprob
from workers.llama.cache import CacheStats, Entry, HostCache, Sharing, tick
from workers.llama.disk_cache import DiskCache
from workers.llama.job import Job
from workers.llama.logprobs import logprobs
from workers.llama.params import context_params
from workers.llama.pending import PendingWork
from workers.llama.weights import Weights

log = logging.getLogger(__name__)

MIN_SAVE = 16  # a cached sequence with fewer tokens than this beyond a public prefix is
#                not worth saving to host memory when its slot is taken
_MIB = 1024 * 1024


@dataclass(frozen=True)
class Layout:
    """What the engine gives its scheduler: the model, its slots, the prefill chunk,
    llama.cpp's threads, the template head to read at start (empty: none) and the
    prefixes every tenant may reuse."""

    spec: ModelSpec
    slots: int
    prefill_chunk: int
    n_threads: int
    head: list[int]
    shared: list[list[int]]
    disk: Path | None = None  # the prompt cache's disk folder (None: no disk tier)


@dataclass(eq=False)
class Seq:
    """A running job as the scheduler sees it: one KV sequence."""

    job: Job
    seq_id: int
    order: int  # admission order: who gets the prefill budget first
    tokens: list[int]  # everything this sequence has read or generated
    n_past: int = 0  # tokens of ``tokens`` already in the KV cache
    prefilled: bool = False  # the prompt is read; one token per step from now on
    out_idx: int = -1  # batch index of this step's output, -1 when none
    n_in: int = 0  # tokens it puts into this step's batch
    keep: bool = True  # its KV may stay cached when it ends (false: its conversation went)
    exact: int = 0  # tokens read in whole prefill chunks from a chunk boundary (see _aligned)


class Scheduler(threading.Thread):
    """Owns the llama.cpp context; runs every step of every sequence."""

    def __init__(self, layout: Layout, weights: Weights, pending: PendingWork[Job]) -> None:
        super().__init__(name=f"llama-{layout.spec.name}", daemon=True)
        self.layout = layout
        self.model = layout.spec.name
        self.pending = pending
        self.vocab = weights.vocab
        self.n_vocab = weights.n_vocab
        self.n_batch = layout.prefill_chunk + layout.slots
        # The template head's stream is the one after the slots' (see the module's notes).
        self.head_seq = layout.slots
        sequences = layout.slots + (1 if layout.head else 0)
        self.ctx = self._context(weights, sequences)
        self.n_ctx = llama_cpp.llama_n_ctx(self.ctx)
        self.mem = llama_cpp.llama_get_memory(self.ctx)
        self.batch = llama_cpp.llama_batch_init(self.n_batch, 0, 1)
        self._token, self._pos, self._logits = self.batch.token, self.batch.pos, self.batch.logits
        self._seq_rows = [self.batch.seq_id[i] for i in range(self.n_batch)]
        for i in range(self.n_batch):
            self.batch.n_seq_id[i] = 1
        self._piece_buf = ctypes.create_string_buffer(256)
        self.free_ids = list(range(layout.slots))
        self.running: list[Seq] = []  # sorted by seq_id
        self.running_count = 0
        self.batch_sizes: Counter[int] = Counter()  # sequences per decode -> decodes
        self._admitted = 0
        self.head: list[int] = []  # the template head as read (run() reads it)
        spec = layout.spec
        self.caching = spec.prompt_cache
        # what each free slot's KV stream holds (None: empty); a running slot's is its job's
        self.kept: list[Entry | None] = [None] * layout.slots
        disk = None
        if self.caching and layout.disk is not None and spec.prompt_cache_disk_mib:
            disk = DiskCache(layout.disk, spec.prompt_cache_disk_mib * _MIB)
        self.host = HostCache(spec.prompt_cache_mib * _MIB if self.caching else 0, disk)
        self.sharing = Sharing(layout.shared)
        self.stats = CacheStats()
        self.cache_view: dict[str, int] = {}  # what cache_info() shows (set on this thread)
        self._update_view()

    def _context(self, weights: Weights, sequences: int) -> Any:
        layout = self.layout
        params = context_params(layout.spec, sequences, self.n_batch, layout.n_threads)
        ctx = llama_cpp.llama_init_from_model(weights.ptr, params)
        if not ctx:
            raise RuntimeError("llama.cpp could not create the context")
        per_seq = llama_cpp.llama_n_ctx_seq(ctx)
        if per_seq < layout.spec.context_size:
            llama_cpp.llama_free(ctx)
            raise RuntimeError(f"llama.cpp gives each sequence {per_seq} tokens of context, "
                               f"not {layout.spec.context_size}")
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
                        extra={"error": str(exc), "model": self.model})
            llama_cpp.llama_memory_seq_rm(self.mem, self.head_seq, -1, -1)
            return []
        return head

    # The loop

    def run(self) -> None:
        try:
            self.head = self._read_head(self.layout.head)
            while self._round():
                pass
        except BaseException:
            log.exception("scheduler stopped", extra={"model": self.model})
        finally:
            self._shutdown()

    def _round(self) -> bool:
        if not self.pending.wait(busy=bool(self.running)):
            return False
        try:
            self._forget()
            self.pending.expire(time.monotonic())
            self._admit()
            self._expire_running()
            if self.running:
                self._run_step(self._plan())
        except Exception as exc:
            log.exception("engine step failed", extra={"model": self.model})
            for seq in list(self.running):
                self._end(seq, "error", f"engine step failed: {exc}")
        return True

    def _admit(self) -> None:
        while self.free_ids and (job := self.pending.next()) is not None:
            try:
                self._start(job)
            except Exception as exc:  # it left the line: it must end here
                log.exception("sequence could not start", extra=job.log_extra)
                job.finish("error", f"could not start: {exc}")

    def _start(self, job: Job) -> None:
        tokens = job.prep.tokens
        seq_id, n_past, hit = self._place(tokens, job.request.tenant)
        seq = Seq(job, seq_id, self._admitted, list(tokens), n_past=n_past, exact=n_past)
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

    # The prompt cache (see workers.llama.cache and the package's notes)

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
        chunk = self.layout.prefill_chunk
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
        if entry is not None and len(entry.tokens) - n >= MIN_SAVE:
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
        if len(entry.tokens) - self.sharing.limit(entry.tokens) < MIN_SAVE:
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
                        extra={"model": self.model, "seq_id": seq_id})
            llama_cpp.llama_memory_seq_rm(self.mem, seq_id, -1, -1)
            return False
        self.kept[seq_id] = Entry(entry.tokens, entry.scope, entry.conversation)
        self.stats.restored += 1
        return True

    def _forget(self) -> None:
        """Drop what is cached of deleted conversations: free slots, host memory, and
        the running jobs of those conversations (their KV is not kept when they end)."""
        gone = self.pending.take_forgets()
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

    def _keep(self, seq: Seq, reason: str) -> None:
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
            "prompt_cache_disk_entries": len(spill) if (spill := self.host.spill) else 0,
            "prompt_cache_disk_bytes": spill.bytes if spill else 0,
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

    def _plan(self) -> list[Seq]:
        """Who puts how many tokens into this step: one each for the generating
        sequences, the prefill chunk to the prompts being read, oldest first. A prompt
        is read in whole chunks (its last one may be shorter): what is left of the
        budget after an older prompt's last chunk waits for the next step rather than
        start a part chunk, so every prompt is read in the same chunks however many
        are read at once, and what it read is reusable (see the prompt cache)."""
        chunk = self.layout.prefill_chunk
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

    def _run_step(self, step: list[Seq]) -> None:
        n = self._fill(step)
        self.batch_sizes[len(step)] += 1  # sequences in this decode (read by the heartbeat)
        rc = self._decode(n)
        if rc != 0:
            self._recover(step, rc)
            return
        chunk = self.layout.prefill_chunk
        for seq in step:
            if not seq.prefilled and seq.exact == seq.n_past and seq.n_in == chunk:
                seq.exact += chunk  # a whole chunk, from a chunk boundary
            seq.n_past += seq.n_in
            if seq.out_idx >= 0:
                seq.prefilled = True
                self._sample(seq)

    def _fill(self, step: list[Seq]) -> int:
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

    def _recover(self, step: list[Seq], rc: int) -> None:
        """A failed decode: undo what it left in the cache, then find who cannot be decoded."""
        log.warning("llama_decode failed", extra={"rc": rc, "sequences": len(step),
                                                  "model": self.model})
        for seq in step:
            llama_cpp.llama_memory_seq_rm(self.mem, seq.seq_id, seq.n_past, -1)
        if len(step) == 1:
            self._end(step[0], "error", f"llama_decode failed (code {rc})")
            return
        for seq in step:  # one sequence at a time: only the one that fails ends
            if seq in self.running:
                self._run_step([seq])

    def _sample(self, seq: Seq) -> None:
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

    def _logprobs(self, seq: Seq, token: int) -> tuple[float, list[TopLogprob]] | None:
        lp = seq.job.prep.logprobs
        if lp is None:
            return None
        row = llama_cpp.llama_get_logits_ith(self.ctx, seq.out_idx)
        value, best = logprobs(row, self.n_vocab, token, lp.top)
        return value, [TopLogprob(self._text(t), v, list(self._piece(t))) for t, v in best]

    def _text(self, token: int) -> str:
        return self._piece(token).decode("utf-8", errors="replace")

    def _end(self, seq: Seq, reason: str, error: str | None = None) -> None:
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

    def _spill_all(self) -> None:
        """The engine is closing: what the slots and host memory cache goes to disk, for
        the next run of this worker."""
        try:
            for seq_id in sorted(self.free_ids):
                entry = self.kept[seq_id]
                if entry is not None:
                    self._save(seq_id, entry)
            moved = self.host.flush()
        except Exception:
            log.exception("could not keep the prompt cache on disk", extra={"model": self.model})
            return
        log.info("prompt cache kept on disk", extra={"model": self.model, "entries": moved})

    def _shutdown(self) -> None:
        """End every job (cancelled when closing, error otherwise) and free the context."""
        closing = self.pending.closing
        reason, error = ("cancelled", None) if closing else ("error", "the engine stopped")
        for seq in list(self.running):
            self._end(seq, reason, error)
        if closing and self.host.spill is not None:
            self._spill_all()
        for job in self.pending.drain():
            job.finish(reason, error)
        llama_cpp.llama_batch_free(self.batch)
        llama_cpp.llama_free(self.ctx)

