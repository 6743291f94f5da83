"""Sends a job's tokens to Redis: output, replay log and pub/sub, batched.

The first piece of text goes out at once (time to first token matters most);
later ones are coalesced for ``coalesce_s`` so a fast model does not cost one
Redis round trip per token. Each flush also reads the job's cancel flag.

Celery's soft time limit raises SoftTimeLimitExceeded from a signal at any
bytecode, so the emitter never relies on two of its own statements running
together: a piece becomes pending by one list append, and a batch is cleared
only after Redis took it. Redis skips a batch it already has (by seq), so the
task's final flush can always re-send what is pending.
"""

from __future__ import annotations

import time
from typing import Any

from shared.jobstore import JobRecord, WorkerJobStore
from workers.engine import Piece


class TokenEmitter:
    def __init__(
        self, store: WorkerJobStore, record: JobRecord, coalesce_s: float
    ) -> None:
        self.store = store
        self.record = record
        self.coalesce_s = coalesce_s
        self.sent_seq = record.seq  # last seq Redis has
        self.completion_tokens = record.completion_tokens
        self.first_token_at: float | None = None
        self.last_token_at: float | None = None
        self._pending: list[dict[str, Any]] = []
        self._flushed_at = 0.0

    @property
    def seq(self) -> int:
        return self._pending[-1]["seq"] if self._pending else self.sent_seq

    def add(self, piece: Piece) -> bool:
        """Take one piece; returns True when the job was asked to cancel."""
        now = time.monotonic()
        self.completion_tokens += piece.tokens
        if piece.tokens:
            self.last_token_at = now
        if piece.text:
            self.first_token_at = self.first_token_at or now
            self._pending.append({"type": "token", "seq": self.seq + 1, "text": piece.text})
        if self.sent_seq == self.record.seq or now - self._flushed_at >= self.coalesce_s:
            return self.flush()
        return False

    def flush(self) -> bool:
        batch = list(self._pending)
        cancelled = self.store.emit(self.record, batch, self.completion_tokens)
        if batch:
            self.sent_seq = batch[-1]["seq"]
            del self._pending[: len(batch)]
        self._flushed_at = time.monotonic()
        return cancelled
