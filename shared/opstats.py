"""Operator statistics of finished jobs, kept in Redis per queue.

Job outcomes happen in the workers, but ``/metrics`` and ``/v1/queues`` are
served by the API. Rather than run a metrics server in every worker, the
lifecycle script that ends a job (``record_finished`` in ``shared/lua/lib.lua``,
see :mod:`shared.lifecycle`) records it in the same atomic step that moves it to
its terminal state (so a job is counted exactly once, however often it was
delivered):

- lifetime counters in the queue's stats hash (:meth:`Keys.queue_stats`): jobs
  by status and model, prompt and generated tokens, and per-bucket counts and
  sums of four histograms (:data:`HISTOGRAMS`);
- a capped list of the queue's most recent finished jobs
  (:meth:`Keys.queue_recent`, newest first) for percentiles.

The API reads them at request time, so the numbers survive API restarts and
agree across several API processes.
"""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import redis.asyncio as aredis

from shared.keys import Keys

RECENT_MAX = 1000  # finished jobs kept per queue for percentiles


@dataclass(frozen=True)
class HistogramSpec:
    name: str  # metric name suffix: chatq_job_{name}
    timing: str  # field of the job's timings
    scale: float  # timing value * scale = observed value (ms -> s)
    bounds: tuple[float, ...]  # upper bounds of the buckets (+Inf is implied)
    help: str


HISTOGRAMS = (
    HistogramSpec("queue_wait_seconds", "queue_wait_ms", 0.001,
                  (0.01, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300, 600),
                  "Time a job waited in its queue before a worker started it."),
    HistogramSpec("ttft_seconds", "ttft_ms", 0.001,
                  (0.05, 0.1, 0.25, 0.5, 1, 2, 5, 10, 30, 60),
                  "Time from a job's start to its first generated token."),
    HistogramSpec("duration_seconds", "duration_ms", 0.001,
                  (0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300, 600),
                  "Time from a job's start to its end."),
    HistogramSpec("tokens_per_second", "tokens_per_s", 1.0,
                  (1, 2, 5, 10, 20, 50, 100, 200, 500, 1000),
                  "Decode rate of a job (generated tokens per second after the first)."),
)


# Recorded by the workers' heartbeats (not per job): how many jobs each decode step
# advanced together (continuous batching).
BATCH_SIZE = HistogramSpec("batch_size", "", 1.0, (1, 2, 3, 4, 6, 8, 12, 16, 24, 32, 48, 64),
                           "Jobs advanced together by one decode step of a worker's engine.")


# Recorded by the workers' heartbeats: the prompt cache's counters (see
# workers.llama.cache.CacheStats), stats-hash fields ``cache|{name}|{model}``.
CACHE_COUNTERS = {
    "hits": "Jobs that started from a prefix an earlier job cached (beyond the template head).",
    "cached_tokens": "Prompt tokens taken from the prompt cache instead of being read.",
    "read_tokens": "Prompt tokens read (decoded) by jobs.",
}


def lua_bound(value: float) -> str:
    """A bucket bound as text, the same in the Lua scripts and in Python."""
    return format(value, "g")


@dataclass
class Histogram:
    spec: HistogramSpec
    counts: dict[str, int] = field(default_factory=dict)  # bound text -> count in that bucket
    sum: float = 0.0

    @property
    def count(self) -> int:
        return sum(self.counts.values())

    def cumulative(self) -> list[tuple[str, int]]:
        """(upper bound, observations <= bound) for every bucket, ending with +Inf."""
        total, out = 0, []
        for bound in [*(lua_bound(b) for b in self.spec.bounds), "+Inf"]:
            total += self.counts.get(bound, 0)
            out.append((bound, total))
        return out


@dataclass
class QueueCounters:
    """A queue's lifetime counters, by model."""

    jobs: dict[tuple[str, str], int] = field(default_factory=dict)  # (model, status) -> n
    tokens: dict[str, int] = field(default_factory=dict)  # model -> generated tokens
    prompt_tokens: dict[str, int] = field(default_factory=dict)
    cache: dict[tuple[str, str], int] = field(default_factory=dict)  # (counter, model) -> n
    histograms: dict[tuple[str, str], Histogram] = field(default_factory=dict)  # (name, model)

    @classmethod
    def parse(cls, raw: dict[str, str]) -> QueueCounters:
        specs = {h.name: h for h in (*HISTOGRAMS, BATCH_SIZE)}
        out = cls()
        for name, value in raw.items():
            kind, _, rest = name.partition("|")
            if kind == "jobs":
                status, _, model = rest.partition("|")
                out.jobs[model, status] = int(value)
            elif kind in ("tokens", "prompt_tokens"):
                getattr(out, kind)[rest] = int(value)
            elif kind == "cache":
                counter, _, model = rest.partition("|")
                out.cache[counter, model] = int(value)
            elif kind == "hist":
                metric, bound, model = rest.split("|", 2)
                out._histogram(specs, metric, model).counts[bound] = int(value)
            elif kind == "hsum":
                metric, _, model = rest.partition("|")
                out._histogram(specs, metric, model).sum = float(value)
        return out

    def _histogram(self, specs: dict[str, HistogramSpec], metric: str, model: str) -> Histogram:
        key = (metric, model)
        if key not in self.histograms:
            self.histograms[key] = Histogram(specs[metric])
        return self.histograms[key]


def batch_increments(model: str, delta: dict[int, int]) -> dict[str, int]:
    """Stats-hash increments (``hist|batch_size|{le}|{model}`` and its sum) for decode steps
    that advanced ``size`` jobs, ``delta[size]`` times."""
    out: dict[str, int] = {}
    for size, steps in delta.items():
        le = next((lua_bound(b) for b in BATCH_SIZE.bounds if size <= b), "+Inf")
        key = f"hist|{BATCH_SIZE.name}|{le}|{model}"
        out[key] = out.get(key, 0) + steps
        out[f"hsum|{BATCH_SIZE.name}|{model}"] = (
            out.get(f"hsum|{BATCH_SIZE.name}|{model}", 0) + size * steps)
    return out


def cache_increments(model: str, now: dict[str, int], sent: dict[str, int]) -> dict[str, int]:
    """Stats-hash increments (``cache|{name}|{model}``) for an engine's prompt cache
    counters ``now`` (as ``cache_info()`` names them), given those already counted."""
    out = {}
    for name in CACHE_COUNTERS:
        key = f"prompt_cache_{name}"
        if key in now:
            out[f"cache|{name}|{model}"] = now[key] - sent.get(key, 0)
    return out


async def read_queue(
    client: aredis.Redis, keys: Keys, queue: str, recent: int = RECENT_MAX
) -> tuple[QueueCounters, list[dict[str, Any]]]:
    """A queue's counters and its most recent finished jobs (newest first)."""
    async with client.pipeline(transaction=False) as pipe:
        pipe.hgetall(keys.queue_stats(queue))
        pipe.lrange(keys.queue_recent(queue), 0, recent - 1)
        raw, items = await pipe.execute()
    return QueueCounters.parse(raw), [json.loads(i) for i in items]


def percentile(values: Sequence[float], q: float) -> float:
    """The q-th percentile (0-100) with linear interpolation between closest ranks."""
    ordered = sorted(values)
    pos = (len(ordered) - 1) * q / 100
    lo, hi = math.floor(pos), math.ceil(pos)
    return ordered[lo] + (ordered[hi] - ordered[lo]) * (pos - lo)


RECENT_TIMINGS = ("queue_wait_ms", "ttft_ms", "duration_ms", "tokens_per_s")


def summarize(recent: list[dict[str, Any]]) -> dict[str, Any]:
    """Percentiles and success rate over recent finished jobs.

    The success rate counts succeeded among succeeded + failed: a cancelled job
    was the caller's choice, not a failure of the queue.
    """
    by_status: dict[str, int] = {}
    for job in recent:
        by_status[job["status"]] = by_status.get(job["status"], 0) + 1
    decided = by_status.get("succeeded", 0) + by_status.get("failed", 0)
    summary: dict[str, Any] = {
        "jobs": len(recent),
        "since": min((j["finished_at"] for j in recent), default=None),
        "by_status": by_status,
        "success_rate": round(by_status.get("succeeded", 0) / decided, 4) if decided else None,
    }
    for name in RECENT_TIMINGS:
        values = [float(j[name]) for j in recent if isinstance(j.get(name), int | float)]
        summary[name] = {
            f"p{q}": round(percentile(values, q), 3) for q in (50, 90, 99)
        } if values else None
    return summary
