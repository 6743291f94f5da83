"""Sends a job's text to Redis: output, replay log and pub/sub, batched.

The first piece of text goes out at once (time to first token matters most);
later ones are coalesced for ``coalesce_s`` so a fast model does not cost one
Redis round trip per token. Each flush also learns whether the job was asked
to stop (``cancel``) or is no longer this worker's (``lost``).

The emitter never relies on two of its own statements running together: a
piece becomes pending by one list append, and a batch is cleared only after
Redis took it; Redis skips events it already has (by seq), so a batch can
always be re-sent (after an interruption, or a Redis connection that broke
after the write). It keeps this run's events, so when Redis lost some it had
acknowledged (a restart that dropped its last second of writes), they are
written again, in order, before anything newer.
"""

from __future__ import annotations

import time

from shared.events import LogprobEntry, TokenEvent, TopLogprobEntry
from shared.lifecycle import BlockingJobs, EmitResult, Emitted, JobRecord
from workers.engine import Piece, TokenLogprob


def logprob_entries(logprobs: list[TokenLogprob]) -> list[LogprobEntry]:
    return [LogprobEntry(token=t.token, logprob=t.logprob, bytes=t.bytes,
                         top_logprobs=[TopLogprobEntry(token=a.token, logprob=a.logprob,
                                                       bytes=a.bytes) for a in t.top])
            for t in logprobs]


class TokenEmitter:
    def __init__(self, jobs: BlockingJobs, record: JobRecord, lease: str,
                 coalesce_s: float) -> None:
        self.jobs = jobs
        self.record = record
        self.lease = lease
        self.coalesce_s = coalesce_s
        self.sent_seq = record.seq  # last seq Redis has
        self.completion_tokens = record.completion_tokens
        self.first_token_at: float | None = None
        self.last_token_at: float | None = None
        self._pending: list[TokenEvent] = []
        self._sent: list[TokenEvent] = []  # this run's events that Redis took
        self._flushed_at = 0.0

    @property
    def seq(self) -> int:
        return self._pending[-1].seq if self._pending else self.sent_seq

    def add(self, piece: Piece) -> Emitted:
        """Take one piece; flush when due. Returns what the last flush learnt."""
        now = time.monotonic()
        self.completion_tokens += piece.tokens
        if piece.tokens:
            self.last_token_at = now
        if piece.text or piece.logprobs:
            self.first_token_at = self.first_token_at or now
            entries = logprob_entries(piece.logprobs) if piece.logprobs else None
            self._pending.append(TokenEvent(seq=self.seq + 1, text=piece.text, logprobs=entries))
        if self.sent_seq == self.record.seq or now - self._flushed_at >= self.coalesce_s:
            return self.flush()
        return Emitted.ok

    def flush(self) -> Emitted:
        batch = list(self._pending)
        result = self._emit(batch)
        if result.verdict is Emitted.gap:
            result = self._emit([e for e in self._sent if e.seq > result.stored_seq] + batch)
        if batch and result.verdict is not Emitted.gap:
            self._sent.extend(batch)
            self.sent_seq = batch[-1].seq
            del self._pending[: len(batch)]
        self._flushed_at = time.monotonic()
        return Emitted.ok if result.verdict is Emitted.gap else result.verdict

    def _emit(self, batch: list[TokenEvent]) -> EmitResult:
        return self.jobs(self.jobs.ops.emit(self.record, self.lease, batch,
                                            self.completion_tokens))
