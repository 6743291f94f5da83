"""The log probabilities of a job's tokens: computed from a logits row
(:func:`logprobs`), and paired with the text each token releases (:class:`LogprobTrail`).
"""

from __future__ import annotations

import codecs
from dataclasses import replace
from typing import Any

import numpy as np

from workers.engine import TokenLogprob, TopLogprob

MAX_TOP_LOGPROBS = 20


def logprobs(
    logits: Any, n_vocab: int, token: int, top: int
) -> tuple[float, list[tuple[int, float]]]:
    """Log-softmax of a logits row (a ctypes float pointer): the token's value and
    the ``top`` most likely tokens with theirs, most likely first."""
    row = np.ctypeslib.as_array(logits, shape=(n_vocab,)).astype(np.float64)
    row -= row.max()
    row -= np.log(np.exp(row).sum())
    best: list[tuple[int, float]] = []
    if top > 0:
        ids = np.argpartition(row, -top)[-top:]
        ids = ids[np.argsort(-row[ids], kind="stable")]
        best = [(int(i), float(row[i])) for i in ids]
    return float(row[token]), best


class LogprobTrail:
    """Pairs each generated token's log probability with the piece that releases its text.

    A token's text is what it adds to the decoded answer (an incomplete UTF-8
    character counts for the token that completes it), so the token texts of
    an answer no stop string cut add up to the answer.
    """

    def __init__(self, top: int) -> None:
        self.top = min(top, MAX_TOP_LOGPROBS)
        self._decoder = codecs.getincrementaldecoder("utf-8")("replace")
        self._pending: list[tuple[int, TokenLogprob]] = []  # (end offset, logprob)
        self._fed = 0
        self._released = 0

    def add(self, data: bytes, logprob: float, top: list[TopLogprob]) -> None:
        text = self._decoder.decode(data)
        self._fed += len(text)
        self._pending.append((self._fed, TokenLogprob(text, logprob, list(data), top)))

    def release(self, chars: int) -> list[TokenLogprob]:
        """Logprobs of the tokens whose text is now out, after ``chars`` more were emitted."""
        self._released += chars
        n = 0
        while n < len(self._pending) and self._pending[n][0] <= self._released:
            n += 1
        out = [lp for _, lp in self._pending[:n]]
        del self._pending[:n]
        return out

    def rest(self, stopped: bool) -> list[TokenLogprob]:
        """At the end: the tokens not released yet (with a stop string, only those
        whose text began before the cut)."""
        tail = self._decoder.decode(b"", final=True)
        if tail and self._pending:
            end, last = self._pending[-1]
            self._pending[-1] = (end + len(tail), replace(last, token=last.token + tail))
        if stopped:
            kept = [lp for end, lp in self._pending if end - len(lp.token) < self._released]
        else:
            kept = [lp for _, lp in self._pending]
        self._pending.clear()
        return kept

