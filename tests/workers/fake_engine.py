"""A fake engine behind the :mod:`workers.engine` seam, for worker tests that run
in-process in milliseconds: it "generates" the words of a scripted answer, one
piece per word, honouring max_tokens, stop strings, cancel and the deadline."""

from __future__ import annotations

import queue
import threading
import time
from collections.abc import Callable, Iterator

from workers.engine import Engine, Generation, GenRequest, Outcome, Piece, drain
from workers.text import TextAssembler

Script = Callable[[GenRequest], str]


def echo(request: GenRequest) -> str:
    """Answers with the last user message."""
    return next(m["content"] for m in reversed(request.messages) if m["role"] == "user")


class FakeGeneration(Generation):
    def __init__(self, engine: FakeEngine, request: GenRequest) -> None:
        self.engine = engine
        self.request = request
        self.outcome = Outcome(prompt_tokens=sum(len(m["content"].split())
                                                 for m in request.messages))
        self.cancelled = threading.Event()
        self._out: queue.Queue[Piece | None] = queue.Queue()
        threading.Thread(target=self._run, daemon=True).start()

    def cancel(self) -> None:
        self.cancelled.set()

    def pieces(self, poll_s: float) -> Iterator[Piece | None]:
        return drain(self._out, poll_s)

    def _run(self) -> None:
        with self.engine.lock:
            self.engine.running += 1
        try:
            self._generate()
        except Exception as exc:
            self.outcome.finish_reason, self.outcome.error = "error", str(exc)
        finally:
            with self.engine.lock:
                self.engine.running -= 1
            self._out.put(None)

    def _ended(self) -> bool:
        if self.cancelled.is_set():
            self.outcome.finish_reason = "cancelled"
        elif time.monotonic() > self.request.deadline:
            self.outcome.finish_reason = "timeout"
        else:
            return False
        return True

    def _generate(self) -> None:
        words = self.engine.script(self.request).split(" ")
        done = len(self.request.continuation.split(" ")) if self.request.continuation else 0
        text = TextAssembler(self.request.params.stop)
        self.outcome.finish_reason = "stop"
        for i, word in enumerate(words[done:]):
            time.sleep(self.engine.token_s)
            if self._ended():
                return
            if self.outcome.completion_tokens >= self.request.params.max_tokens:
                self.outcome.finish_reason = "length"
                break
            piece, stopped = text.feed((word if i + done == 0 else " " + word).encode())
            self.outcome.completion_tokens += 1
            self._out.put(Piece(piece, 1))
            if stopped:
                return
        self._out.put(Piece(text.flush(), 0))


class FakeEngine(Engine):
    def __init__(self, script: Script = echo, slots: int = 4, token_s: float = 0.002) -> None:
        self.model = "fake"
        self.slots = slots
        self.context_size = None
        self.prompter = None
        self.script = script
        self.token_s = token_s
        self.lock = threading.Lock()
        self.running = 0
        self.requests: list[GenRequest] = []

    def submit(self, request: GenRequest) -> Generation:
        self.requests.append(request)
        return FakeGeneration(self, request)

    def busy(self) -> int:
        return self.running

    def info(self) -> dict[str, str]:
        return {"loaded_at": "0"}

    def close(self) -> None:
        pass
