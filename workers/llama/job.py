"""A job as the llama engine holds it: what it needs to run (:class:`Prepared`, built
in ``submit``'s thread) and the caller's handle (:class:`Job`), whose output queue the
scheduler thread fills and the caller reads.
"""

from __future__ import annotations

import logging
import queue
from collections.abc import Callable, Iterator
from dataclasses import dataclass

from workers.engine import Generation, GenRequest, Outcome, Piece, TopLogprob
from workers.llama.logprobs import LogprobTrail
from workers.llama.sampling import SamplerChain
from workers.text import TextAssembler

log = logging.getLogger(__name__)

END = object()  # the last item of a job's output queue


@dataclass
class Prepared:
    """What a job needs before it can take a slot (built in ``submit``'s thread)."""

    tokens: list[int]  # prompt + continuation
    budget: int  # tokens it may generate (max_tokens, and the room left in its context)
    chain: SamplerChain
    text: TextAssembler
    logprobs: LogprobTrail | None
    cut: bool = False  # a stop string ended the text: nothing held back is released


class Job(Generation):
    """The caller's handle. Its generation state changes only on the scheduler thread."""

    def __init__(self, request: GenRequest, wake: Callable[[], None],
                 alive: Callable[[], bool]) -> None:
        self.request = request
        prompt_tokens = len(request.prompt.tokens) if request.prompt is not None else None
        self.outcome = Outcome(prompt_tokens=prompt_tokens)
        self.cancelled = False
        self.prepared: Prepared | None = None
        self.finished = False
        self._out: queue.SimpleQueue[object] = queue.SimpleQueue()
        self._wake = wake
        self._alive = alive

    @property
    def prep(self) -> Prepared:
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
            if item is END:
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
            self._out.put(END)

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

