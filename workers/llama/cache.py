"""The prompt cache's bookkeeping: which token prefixes the llama engine holds, whose
they are, and which of them a new job may start from.

The KV itself lives in llama.cpp (a finished job's sequence stays in its slot) or,
once evicted from its slot, as a saved sequence state in host memory
(:class:`HostCache`). This module knows nothing of llama.cpp: it decides, the
scheduler (:mod:`workers.llama.scheduler`) does the copying.

What must always hold, and why:

- **An entry is exactly what its KV holds.** ``Entry.tokens`` lists the tokens
  whose KV was written, in order (a job's prompt and answer up to its last
  *decoded* token, never one only sampled); a prefix match therefore gives the
  exact KV a job would compute reading those tokens itself.
- **Isolation.** An entry belongs to the tenant (``scope``) of the job that wrote
  it. Another tenant's job may reuse it only up to a prefix the operator marked
  shared (the registry's ``shared_prompts``, and the chat template's own head,
  which holds no caller's text): a timing difference can then reveal nothing
  but that a public prefix was read before (:meth:`Sharing.limit`).
- **Bounded.** The host tier holds at most ``budget`` bytes of saved states; the
  least recently used goes first, and a state larger than the budget is never kept.
- **Forgettable.** Entries carry the conversation they came from, so deleting a
  conversation drops them (:meth:`HostCache.forget`, and the scheduler's slots).
"""

from __future__ import annotations

import itertools
from collections import OrderedDict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Protocol

_ticks = itertools.count(1)
MIN_REUSE = 16  # a shorter match is not worth taking a slot's entry (or a restore) for


def tick() -> int:
    """A use stamp: larger is more recent (least recently used goes first)."""
    return next(_ticks)


def common_prefix(a: list[int], b: list[int]) -> int:
    """How many tokens ``a`` and ``b`` share from their start. A binary search on slice
    comparisons (done in C): long prompts are compared on the scheduler thread."""
    lo, hi = 0, min(len(a), len(b))
    if a[:hi] == b[:hi]:
        return hi
    hi -= 1  # they differ within the first min(len) tokens
    while lo < hi:
        mid = (lo + hi + 1) // 2
        if a[:mid] == b[:mid]:
            lo = mid
        else:
            hi = mid - 1
    return lo


@dataclass
class Entry:
    """A cached sequence: the tokens its KV holds, whose it is, and when it was used."""

    tokens: list[int]
    scope: str  # the tenant of the job that wrote it
    conversation: str | None = None  # the conversation of that job, when it had one
    used: int = field(default_factory=tick)
    state: bytes | None = None  # the saved sequence (host tier only)

    @property
    def size(self) -> int:
        return len(self.state) if self.state is not None else 0

    def of(self, scope: str, conversation: str) -> bool:
        return self.scope == scope and self.conversation == conversation


class Sharing:
    """The prefixes any tenant may reuse: the template's head and the operator's
    shared prompts (as token lists, each the exact beginning of the prompts they open)."""

    def __init__(self, prefixes: Sequence[Sequence[int]]) -> None:
        self.prefixes = [list(p) for p in prefixes if p]

    def limit(self, tokens: list[int]) -> int:
        """The longest shared prefix ``tokens`` begin with (0: none)."""
        best = 0
        for prefix in self.prefixes:
            if best < len(prefix) <= len(tokens) and tokens[:len(prefix)] == prefix:
                best = len(prefix)
        return best

    def usable(self, tokens: list[int], scope: str, entry: Entry) -> int:
        """How many tokens a job of ``scope`` reading ``tokens`` may take from ``entry``:
        their common prefix (another tenant's: only up to a shared prefix), leaving at
        least the last token to read (its logits start the answer); 0 under
        ``MIN_REUSE``."""
        n = common_prefix(tokens, entry.tokens)
        if entry.scope != scope:
            n = min(n, self.limit(tokens))
        n = min(n, len(tokens) - 1)
        return n if n >= MIN_REUSE else 0


def covers(new: Entry, old: Entry) -> bool:
    """``old`` adds nothing beside ``new``: the same tenant's, and ``new`` begins with
    all its tokens (a conversation's earlier turn)."""
    return old.scope == new.scope and len(old.tokens) <= len(new.tokens) and \
        new.tokens[:len(old.tokens)] == old.tokens


def best_of(entries: Iterable[Entry], tokens: list[int], scope: str,
            sharing: Sharing) -> tuple[Entry | None, int]:
    """The entry a job of ``scope`` reading ``tokens`` may take the most tokens from,
    and how many (0: none)."""
    found: Entry | None = None
    most = 0
    for entry in entries:
        n = sharing.usable(tokens, scope, entry)
        if n > most:
            found, most = entry, n
    return found, most


class Spill(Protocol):
    """The tier below host memory (:class:`workers.llama.disk_cache.DiskCache`)."""

    bytes: int

    def __len__(self) -> int: ...
    def put(self, entry: Entry) -> bool: ...
    def best(self, tokens: list[int], scope: str, sharing: Sharing
             ) -> tuple[Entry | None, int]: ...
    def holds(self, entry: Entry) -> bool: ...
    def take(self, entry: Entry) -> None: ...
    def forget(self, scope: str, conversation: str) -> int: ...


class HostCache:
    """Saved sequence states in host memory, least recently used first out (to the
    disk tier ``spill`` when there is one)."""

    def __init__(self, budget: int, spill: Spill | None = None) -> None:
        self.budget = budget  # bytes; 0 turns the tier off
        self._entries: OrderedDict[int, Entry] = OrderedDict()  # id -> entry, LRU first
        self._ids = itertools.count()
        self.bytes = 0
        self.spill = spill

    def __len__(self) -> int:
        return len(self._entries)

    @property
    def tokens(self) -> int:
        return sum(len(e.tokens) for e in self._entries.values())

    def fits(self, size: int) -> bool:
        return 0 < size <= self.budget

    def put(self, entry: Entry) -> bool:
        """Keep ``entry`` (its ``state`` set); evicts the least recently used to make room.
        False when it cannot fit at all."""
        if not self.fits(entry.size):
            return False
        self._drop_covered(entry)
        while self.bytes + entry.size > self.budget and self._entries:
            _, old = self._entries.popitem(last=False)
            self.bytes -= old.size
            if self.spill is not None:
                self.spill.put(old)
        self._entries[next(self._ids)] = entry
        self.bytes += entry.size
        return True

    def _drop_covered(self, entry: Entry) -> None:
        """An older entry of the same scope whose tokens the new one begins with adds
        nothing (a conversation's earlier turn): it goes."""
        for key, old in list(self._entries.items()):
            if covers(entry, old):
                del self._entries[key]
                self.bytes -= old.size

    def best(self, tokens: list[int], scope: str, sharing: Sharing) -> tuple[Entry | None, int]:
        """The entry a job may take the most tokens from, and how many (0: none)."""
        found, most = best_of(self._entries.values(), tokens, scope, sharing)
        if self.spill is not None:
            on_disk, n = self.spill.best(tokens, scope, sharing)
            if n > most:
                found, most = on_disk, n
        return found, most

    def take(self, entry: Entry) -> None:
        """Remove ``entry`` (it is being restored into a slot, which holds it from now);
        one from the disk tier gets its state read back."""
        for key, held in list(self._entries.items()):
            if held is entry:
                del self._entries[key]
                self.bytes -= entry.size
                return
        if self.spill is not None and self.spill.holds(entry):
            self.spill.take(entry)

    def forget(self, scope: str, conversation: str) -> int:
        """Drop the entries of one conversation; how many went."""
        gone = [k for k, e in self._entries.items() if e.of(scope, conversation)]
        for key in gone:
            self.bytes -= self._entries.pop(key).size
        spilled = self.spill.forget(scope, conversation) if self.spill is not None else 0
        return len(gone) + spilled

    def flush(self) -> int:
        """Move every entry to the disk tier (the engine is closing); how many went."""
        moved = 0
        if self.spill is not None:
            for entry in self._entries.values():
                moved += self.spill.put(entry)
        self.clear()
        return moved

    def clear(self) -> None:
        self._entries.clear()
        self.bytes = 0


@dataclass
class CacheStats:
    """Counters since the engine started (read by the heartbeat)."""

    hits: int = 0  # jobs that started from a cached prefix (template head included)
    cached_tokens: int = 0  # prompt tokens taken from the cache
    read_tokens: int = 0  # prompt tokens read (decoded) by the jobs
    saved: int = 0  # sequences saved to host memory
    restored: int = 0  # sequences restored from host memory
