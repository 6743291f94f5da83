"""A thread that wakes up every N seconds until stopped: the one helper behind every
background loop (the recovery sweeper, the heartbeat, the outbox drainer, the cancel
listener, the webhook feeder and scheduler).

What must hold, and why:

- **It never dies of an error.** A round that raises is logged and the next one
  comes as usual: one unreachable Redis or MongoDB must not stop a heartbeat or a
  sweeper for good. An error the loop expects (``expected``: Redis away during a
  restart) is one line at ``expected_level``; any other is logged with its
  traceback.
- **It stops at once.** The wait between rounds is on an event that :meth:`stop`
  sets, so stopping never waits out an interval; an error raised while stopping
  (a socket closed under the round) is not reported.
- **It never keeps a process alive** (a daemon thread), and its name says what it
  is (``chatq-heartbeat``...), as thread dumps and logs show it.

``interval_s`` 0 runs the next round at once: for a round that blocks by itself
(reading a stream, listening on a channel), with ``retry_s`` the pause after an error.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable

_log = logging.getLogger(__name__)


class Periodic(threading.Thread):
    """Calls ``fn`` every ``interval_s`` seconds (the first call after one interval)
    until :meth:`stop`; after a failed round the wait is ``retry_s`` (default the
    interval)."""

    def __init__(self, name: str, interval_s: float, fn: Callable[[], object], *,
                 expected: tuple[type[BaseException], ...] = (),
                 expected_message: str = "round skipped",
                 expected_level: int = logging.WARNING,
                 retry_s: float | None = None,
                 logger: logging.Logger | None = None) -> None:
        super().__init__(name=name, daemon=True)
        self.interval_s = interval_s
        self.retry_s = interval_s if retry_s is None else retry_s
        self.fn = fn
        self.expected = expected
        self.expected_message = expected_message
        self.expected_level = expected_level
        self.log = logger or _log
        self.stopping = threading.Event()

    def run(self) -> None:
        wait = self.interval_s
        while not self.stopping.wait(wait):
            wait = self.interval_s if self.round() else self.retry_s

    def round(self) -> bool:
        """One call of ``fn``; False when it raised (logged unless stopping)."""
        try:
            self.fn()
            return True
        except self.expected as exc:
            if not self.stopping.is_set():
                self.log.log(self.expected_level, self.expected_message,
                             extra={"loop": self.name, "error": str(exc) or type(exc).__name__})
        except Exception:
            if not self.stopping.is_set():
                self.log.exception("%s: round failed", self.name, extra={"loop": self.name})
        return False

    def stop(self, timeout: float | None = None) -> None:
        """Stop after the current round; with ``timeout``, wait that long for it to end."""
        self.stopping.set()
        if timeout is not None and self.is_alive() and threading.current_thread() is not self:
            self.join(timeout)
