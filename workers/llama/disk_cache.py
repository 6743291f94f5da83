"""The prompt cache's disk tier: saved sequence states in files, so a restarted worker,
or a conversation idle for longer than host memory keeps it, resumes without reading
its history again.

Below the host-memory tier (:class:`workers.llama.cache.HostCache`): what host memory
evicts comes here (and, when the engine closes, everything it holds), least recently
used first out past the budget (``prompt_cache_disk_mib``). A file is one entry: a JSON
header line (tokens, tenant, conversation) and the state bytes. Taking an entry back
(into a slot) removes its file. What must hold:

- **One model, one layout.** States are only valid for the model file and the KV layout
  that wrote them, so the engine gives each (model, load options, context) its own
  folder (:func:`folder_for`); llama.cpp also refuses a state of another shape, and a
  refused restore reads the prompt instead.
- **Isolation.** Each entry keeps its tenant: the same reuse rules as in memory
  (:class:`~workers.llama.cache.Sharing`); the folder is created private (0700), its
  files 0600: they hold KV of tenants' prompts.
- **Forgettable.** A deleted conversation's files go.
- **Crash-safe.** A file is written under a temporary name and renamed: a worker killed
  while writing leaves no half-written entry that a later job could read (temporary files
  are removed at start); an unreadable file is dropped.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
from pathlib import Path

from workers.llama.cache import Entry, Sharing, best_of, covers, tick

log = logging.getLogger(__name__)

_SUFFIX = ".kv"


def folder_for(root: Path, model: str, identity: dict[str, object]) -> Path:
    """The folder of one model's states: its name and a digest of what makes a saved
    state loadable (the GGUF file, llama.cpp's version, the KV layout)."""
    digest = hashlib.sha256(json.dumps(identity, sort_keys=True, default=str).encode())
    safe = "".join(c if c.isalnum() or c in "-_." else "_" for c in model)
    return root / f"{safe}-{digest.hexdigest()[:16]}"


class DiskCache:
    """Saved sequence states in files under ``folder``, at most ``budget`` bytes."""

    def __init__(self, folder: Path | None, budget: int) -> None:
        self.folder = folder
        self.budget = budget if folder is not None else 0
        self._entries: dict[Path, Entry] = {}  # file -> entry (its state stays on disk)
        self._sizes: dict[Path, int] = {}
        self.bytes = 0
        if self.budget:
            assert folder is not None
            folder.mkdir(parents=True, exist_ok=True, mode=0o700)
            self._load()

    def __len__(self) -> int:
        return len(self._entries)

    @property
    def tokens(self) -> int:
        return sum(len(e.tokens) for e in self._entries.values())

    def _load(self) -> None:
        """Index the files a previous run left (oldest first), drop broken ones."""
        assert self.folder is not None
        for tmp in self.folder.glob("*.tmp"):
            tmp.unlink(missing_ok=True)
        files = sorted(self.folder.glob(f"*{_SUFFIX}"), key=lambda f: f.stat().st_mtime)
        for path in files:
            try:
                with path.open("rb") as f:
                    header = json.loads(f.readline())
                entry = Entry([int(t) for t in header["tokens"]], str(header["scope"]),
                              header.get("conversation"), tick())
            except (OSError, ValueError, KeyError, TypeError):
                log.warning("unreadable prompt cache file dropped", extra={"path": str(path)})
                path.unlink(missing_ok=True)
                continue
            self._index(path, entry, path.stat().st_size)
        self._trim(0)

    def _index(self, path: Path, entry: Entry, size: int) -> None:
        self._entries[path] = entry
        self._sizes[path] = size
        self.bytes += size

    def _drop(self, path: Path) -> None:
        self._entries.pop(path, None)
        self.bytes -= self._sizes.pop(path, 0)
        path.unlink(missing_ok=True)

    def _trim(self, room: int) -> None:
        """Drop the least recently used files until ``room`` more bytes fit."""
        while self._entries and self.bytes + room > self.budget:
            oldest = min(self._entries, key=lambda p: self._entries[p].used)
            self._drop(oldest)

    def put(self, entry: Entry) -> bool:
        """Write ``entry`` (its state set) to a file; False when it cannot be kept."""
        if not self.budget or entry.state is None or not 0 < entry.size <= self.budget:
            return False
        assert self.folder is not None
        for path, old in list(self._entries.items()):
            if covers(entry, old):
                self._drop(path)
        header = json.dumps({"tokens": entry.tokens, "scope": entry.scope,
                             "conversation": entry.conversation}).encode() + b"\n"
        size = len(header) + entry.size
        self._trim(size)
        path = self.folder / f"{hashlib.sha256(header).hexdigest()[:24]}{_SUFFIX}"
        tmp = path.with_suffix(".tmp")
        try:
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
            with os.fdopen(fd, "wb") as f:
                f.write(header)
                f.write(entry.state)
            tmp.replace(path)
        except OSError as exc:
            log.warning("could not write a prompt cache file", extra={"error": str(exc)})
            with contextlib.suppress(OSError):
                tmp.unlink()
            return False
        if path in self._entries:  # the same tokens again
            self._drop_index(path)
        self._index(path, Entry(entry.tokens, entry.scope, entry.conversation, entry.used),
                    size)
        return True

    def _drop_index(self, path: Path) -> None:
        self._entries.pop(path, None)
        self.bytes -= self._sizes.pop(path, 0)

    def best(self, tokens: list[int], scope: str, sharing: Sharing) -> tuple[Entry | None, int]:
        """The entry a job may take the most tokens from, and how many (0: none)."""
        return best_of(self._entries.values(), tokens, scope, sharing)

    def holds(self, entry: Entry) -> bool:
        return any(held is entry for held in self._entries.values())

    def take(self, entry: Entry) -> None:
        """Read ``entry``'s state from its file into it; the file goes (the slot holds
        the sequence from now). A file that cannot be read leaves the state unset."""
        for path, held in list(self._entries.items()):
            if held is entry:
                try:
                    with path.open("rb") as f:
                        f.readline()
                        entry.state = f.read()
                except OSError as exc:
                    log.warning("could not read a prompt cache file", extra={"error": str(exc)})
                self._drop(path)
                return

    def forget(self, scope: str, conversation: str) -> int:
        gone = [p for p, e in self._entries.items() if e.of(scope, conversation)]
        for path in gone:
            self._drop(path)
        return len(gone)
