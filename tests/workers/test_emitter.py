"""The emitter writes each batch whole, even when a soft time limit signal lands mid-batch."""

from __future__ import annotations

import os
import signal
import time
from typing import Any

import pytest

from shared.jobstore import JobRecord
from shared.schemas import JobStatus, SamplingParams
from workers.emitter import TokenEmitter
from workers.engine import Piece


class Interrupted(Exception):
    pass


class SignalInsideEmit:
    """A store whose emit() is hit by SIGUSR1 right after its write (the race seen live)."""

    def __init__(self) -> None:
        self.batches: list[tuple[list[dict[str, Any]], str]] = []

    def emit(self, record: JobRecord, events: list[dict[str, Any]], text: str,
             counters: dict[str, int]) -> bool:
        self.batches.append((list(events), text))
        if len(self.batches) == 2:
            os.kill(os.getpid(), signal.SIGUSR1)
        return False


def test_a_signal_during_a_batch_does_not_write_it_twice(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    def interrupt(*_: object) -> None:
        raise Interrupted

    previous = signal.signal(signal.SIGUSR1, interrupt)
    try:
        store = SignalInsideEmit()
        record = JobRecord(id="j", status=JobStatus.running, model="m", queue="q", tenant="t",
                           params=SamplingParams(max_tokens=8, temperature=0, top_p=1),
                           messages=[], created_at=time.time())
        emitter = TokenEmitter(store, record, "", coalesce_s=0)  # type: ignore[arg-type]
        with pytest.raises(Interrupted):
            for text in ("a", "b", "c"):
                emitter.add(Piece(text, 1))
        emitter.flush()  # what the task's `finally` does
    finally:
        signal.signal(signal.SIGUSR1, previous)
    written = "".join(text for _, text in store.batches)
    seqs = [e["seq"] for events, _ in store.batches for e in events]
    assert written == "ab"
    assert seqs == [1, 2]
    assert emitter.output == "ab"
