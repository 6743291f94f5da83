"""Sends a job's tokens to Redis: output, replay log and pub/sub, batched.

The first piece of text goes out at once (time to first token matters most);
later ones are coalesced for ``coalesce_s`` so a fast model does not cost one
Redis round trip per token. Each flush also reads the job's cancel flag.

Celery's soft time limit raises SoftTimeLimitExceeded from a signal (SIGUSR1)
at any bytecode. The emitter's counters, buffers and the Redis batch must move
together, so the signal is deferred while they change (see :func:`deferred`).
"""

from __future__ import annotations

import contextlib
import signal
import time
from collections.abc import Iterator

from shared.jobstore import JobRecord, WorkerJobStore
from workers.engine import Piece


@contextlib.contextmanager
def deferred(signum: int = signal.SIGUSR1) -> Iterator[None]:
    """Hold back ``signum`` (delivered on exit) so a batch is written whole or not at all."""
    old = signal.pthread_sigmask(signal.SIG_BLOCK, {signum})
    try:
        yield
    finally:
        signal.pthread_sigmask(signal.SIG_SETMASK, old)


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
        with deferred():
            return self._add(piece)

    def _add(self, piece: Piece) -> bool:
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
            return self._flush()
        return False

    def flush(self) -> bool:
        with deferred():
            return self._flush()

    def _flush(self) -> bool:
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
