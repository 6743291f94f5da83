"""The resident model and its token loop.

The loop is written against ``Llama.generate`` (one token at a time) rather
than ``create_chat_completion`` so that chatq knows exactly how many tokens were
generated, can check for cancellation between tokens, and can hold back text
that may be the start of a stop string.
"""

from __future__ import annotations

import logging
import random
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import llama_cpp
from llama_cpp import Llama

from shared.prompting import PromptRenderer
from shared.registry import ModelSpec
from shared.schemas import SamplingParams

log = logging.getLogger(__name__)


@dataclass
class Piece:
    """Text that is final (safe to show), and how many tokens produced it."""

    text: str
    tokens: int


@dataclass
class Outcome:
    finish_reason: str = "length"  # "stop" | "length"


class Engine:
    def __init__(self, spec: ModelSpec, path: Path, n_threads: int | None = None) -> None:
        started = time.monotonic()
        self.spec = spec
        self.llm = Llama(
            model_path=str(path),
            n_ctx=spec.context_size,
            n_gpu_layers=spec.gpu_layers,
            n_threads=n_threads,
            verbose=False,
        )
        self.renderer = PromptRenderer(self.llm)
        self.loaded_at = time.time()
        log.info(
            "model loaded",
            extra={"model": spec.name, "path": str(path),
                   "load_s": round(time.monotonic() - started, 3)},
        )

    def generate(
        self, prompt: list[int], params: SamplingParams, stop: list[str], outcome: Outcome
    ) -> Iterator[Piece]:
        """Yield final text pieces; sets ``outcome.finish_reason`` when done.

        ``prompt`` may already end with earlier output (a redelivered job continues).
        """
        llm = self.llm
        vocab = llm._model.vocab
        room = self.spec.context_size - len(prompt)
        budget = min(params.max_tokens, room)
        llm.set_seed(params.seed if params.seed is not None else random.getrandbits(32))
        text = _TextAssembler(stop)
        outcome.finish_reason = "length"
        if budget <= 0:
            return
        tokens = llm.generate(prompt, temp=params.temperature, top_p=params.top_p)
        for produced, token in enumerate(tokens, start=1):
            if llama_cpp.llama_vocab_is_eog(vocab, token):
                outcome.finish_reason = "stop"
                break
            piece, stopped = text.feed(llm.detokenize([token]))
            if stopped:
                outcome.finish_reason = "stop"
                yield Piece(piece, 1)
                return
            yield Piece(piece, 1)
            if produced >= budget:
                break
        yield Piece(text.flush(), 0)


class _TextAssembler:
    """Turns token bytes into text that is safe to emit.

    Holds back incomplete UTF-8 sequences and any tail that could still become
    one of the stop strings; cuts the text at a completed stop string.
    """

    def __init__(self, stop: list[str]) -> None:
        self.stop = [s for s in stop if s]
        self.pending = b""
        self.held = ""

    def feed(self, data: bytes) -> tuple[str, bool]:
        self.pending += data
        try:
            self.held += self.pending.decode("utf-8")
            self.pending = b""
        except UnicodeDecodeError as exc:
            if exc.start == 0 and len(self.pending) < 4:
                return "", False  # wait for the rest of the character
            self.held += self.pending[: exc.start].decode("utf-8")
            self.pending = self.pending[exc.start :]
        for s in self.stop:
            at = self.held.find(s)
            if at >= 0:
                out, self.held = self.held[:at], ""
                return out, True
        keep = self._stop_prefix_len()
        cut = len(self.held) - keep
        out, self.held = self.held[:cut], self.held[cut:]
        return out, False

    def _stop_prefix_len(self) -> int:
        best = 0
        for s in self.stop:
            for n in range(min(len(s) - 1, len(self.held)), 0, -1):
                if self.held.endswith(s[:n]):
                    best = max(best, n)
                    break
        return best

    def flush(self) -> str:
        out = self.held + self.pending.decode("utf-8", errors="replace")
        self.held, self.pending = "", b""
        return out
