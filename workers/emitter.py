"""Sends a job's tokens to Redis: output, replay log and pub/sub, batched.

The first piece of text goes out at once (time to first token matters most);
later ones are coalesced for ``coalesce_s`` so a fast model does not cost one
Redis round trip per token. Each flush also reads the job's cancel flag.
"""

from __future__ import annotations

import time

from shared.jobstore import JobRecord, WorkerJobStore
from workers.engine import Piece


class TokenEmitter:
    def __init__(
        self, store: WorkerJobStore, record: JobRecord, output: str, coalesce_s: float
    ) -> None:
        self.store = store
        self.record = record
        self.coalesce_s = coalesce_s
        self.seq = record.seq
        self.completion_tokens = record.completion_tokens
        self.output = output
        self.first_token_at: float | None = None
        self.last_token_at: float | None = None
        self._events: list[dict[str, object]] = []
        self._text = ""
        self._flushed_at = 0.0

    def add(self, piece: Piece) -> bool:
        """Take one piece; returns True when the job was asked to cancel."""
        self.completion_tokens += piece.tokens
        now = time.monotonic()
        if piece.tokens:
            self.last_token_at = now
        if piece.text:
            if self.first_token_at is None:
                self.first_token_at = now
            self.seq += 1
            self._events.append({"type": "token", "seq": self.seq, "text": piece.text})
            self._text += piece.text
        first = self.seq == self.record.seq + 1 and len(self._events) == 1
        if first or now - self._flushed_at >= self.coalesce_s:
            return self.flush()
        return False

    def flush(self) -> bool:
        cancelled = self.store.emit(
            self.record,
            self._events,
            self._text,
            {"seq": self.seq, "completion_tokens": self.completion_tokens},
        )
        self.output += self._text
        self._events, self._text = [], ""
        self._flushed_at = time.monotonic()
        return cancelled
