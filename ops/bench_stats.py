"""The figures ``make bench`` prints, computed from measurements alone (no I/O).

What must hold, and why:

- A percentile is the inclusive one (``statistics.quantiles(method="inclusive")``):
  with few values (5 turns of one conversation) it stays between the smallest and
  the largest measured value, never extrapolated past them; one value is its own
  percentile of every rank.
- A ratio whose denominator is missing (no value, or 0) is ``None`` and printed as
  ``n/a``, never as 0 or infinity: a side that produced nothing must not read as a
  side that was infinitely fast or slow.
- A verdict compares one ratio with its target in the direction the target states
  (``>=`` for throughput, ``<=`` for latency); a missing ratio is never ``met``.
"""

from __future__ import annotations

import statistics
from collections.abc import Sequence
from dataclasses import dataclass


def percentile(values: Sequence[float], q: int) -> float:
    """The ``q``-th percentile (1..99) of ``values``, inclusive method."""
    if not values:
        raise ValueError("no values")
    if not 1 <= q <= 99:
        raise ValueError(f"q must be in 1..99, not {q}")
    ordered = sorted(values)
    if len(ordered) == 1:
        return ordered[0]
    return statistics.quantiles(ordered, n=100, method="inclusive")[q - 1]


def ratio(num: float | None, den: float | None) -> float | None:
    """``num / den``, or None when either is missing or ``den`` is 0."""
    if num is None or den is None or den == 0:
        return None
    return num / den


def show(value: float | None, spec: str = ".2f", unit: str = "x") -> str:
    return "n/a" if value is None else f"{value:{spec}}{unit}"


def verdict(value: float | None, target: str) -> str:
    """``target``: ``">= 1.0"`` or ``"<= 0.2"``; says whether ``value`` meets it."""
    op, bound = target.split()
    if value is None:
        return f"target {target}: n/a"
    ok = value >= float(bound) if op == ">=" else value <= float(bound)
    return f"target {target}: {'met' if ok else 'NOT met'}"


def late_turns(turns: int) -> range:
    """The later half of a conversation's turns, 1-based: 6..10 of 10, 2 of 2, 2..3 of 3.
    Their first-token times show whether a long history is read again each turn."""
    if turns < 1:
        raise ValueError("a conversation has at least one turn")
    return range(turns // 2 + 1, turns + 1)


def turns_label(turns: int) -> str:
    late = late_turns(turns)
    return f"turn {late[0]}" if len(late) == 1 else f"turns {late[0]}-{late[-1]}"


@dataclass(frozen=True)
class Side:
    """One side's single-turn figures: by one caller, and by several at once."""

    per_stream: float  # 1 caller: median tokens/s of a stream after its first token
    ttft1_ms: float  # 1 caller: first token p50
    aggregate: float  # several callers: all tokens / wall clock
    ttftn_ms: float  # several callers: first token p50


RATIO_ROWS = [("1 caller, per-stream tok/s", "per_stream"),
              ("1 caller, first token p50", "ttft1_ms"),
              ("{n} callers, aggregate tok/s", "aggregate"),
              ("{n} callers, first token p50", "ttftn_ms")]
# The targets of the issues, by (peer, figure): the engine issue's (23).
TARGETS = {("direct", "per_stream"): ">= 0.97", ("llama-server", "aggregate"): ">= 1.0",
           ("llama-server", "ttftn_ms"): "<= 1.2"}


def ratio_rows(chatq: Side, peers: dict[str, Side]) -> list[tuple[str, list[float | None]]]:
    """chatq's figure over each peer's, row by row (:data:`RATIO_ROWS`), peers in order."""
    return [(label, [ratio(getattr(chatq, field), getattr(p, field)) for p in peers.values()])
            for label, field in RATIO_ROWS]


def ratio_table(chatq: Side, peers: dict[str, Side], callers: int) -> list[str]:
    """The table of chatq's ratios, one column per peer, with the targets set."""
    fields = [field for _, field in RATIO_ROWS]
    lines = ["  chatq / peer".ljust(34) + "".join(f"{name:<34}" for name in peers)]
    for (label, values), field in zip(ratio_rows(chatq, peers), fields, strict=True):
        cells = []
        for name, value in zip(peers, values, strict=True):
            target = TARGETS.get((name, field))
            cells.append(f"{show(value)}{f' ({verdict(value, target)})' if target else ''}")
        lines.append(f"  {label.format(n=callers):<32}" + "".join(f"{c:<34}" for c in cells))
    return lines
