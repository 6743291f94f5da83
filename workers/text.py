"""From token bytes to text that is safe to show: whole UTF-8 characters, stop strings cut."""

from __future__ import annotations


class TextAssembler:
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
