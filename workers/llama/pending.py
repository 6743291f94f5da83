"""The work waiting for the scheduler thread, and the one lock it shares with the rest.

Threads that submit put prepared jobs in line (:meth:`PendingWork.settle`), a deleted
conversation's id (:meth:`PendingWork.forget`), or wake the scheduler after a cancel
(:meth:`PendingWork.wake`); the scheduler waits for any of it (:meth:`PendingWork.wait`),
takes jobs in submission order (:meth:`PendingWork.next`) and ends the ones that expire
while they wait. ``close`` marks the end and waits for the submits still preparing (they
read the model's vocabulary, which must outlive them).
"""

from __future__ import annotations

import threading
from collections import deque
from typing import Protocol


class Waiting(Protocol):
    """What the line needs of a job."""

    def expired(self, now: float) -> str | None: ...

    def finish(self, reason: str, error: str | None = None) -> None: ...


class PendingWork[J: Waiting]:
    """Jobs waiting for a slot (oldest first), deleted conversations to forget, and
    whether the engine is closing; every method is safe from any thread."""

    def __init__(self) -> None:
        self._cv = threading.Condition()
        self._jobs: deque[J] = deque()
        self._forgets: list[tuple[str, str]] = []  # deleted conversations (tenant, id)
        self._preparing = 0  # submits building a job's tokens and sampler chain
        self._closing = False

    @property
    def closing(self) -> bool:
        return self._closing

    # The submitting side

    def begin(self) -> bool:
        """A submit starts preparing a job: False (nothing to prepare) when closing."""
        with self._cv:
            if self._closing:
                return False
            self._preparing += 1
            return True

    def settle(self, job: J, reason: str | None, error: str | None) -> None:
        """A submit's prepared job joins the line (``reason`` None), or ends with
        ``reason``; either before :meth:`close` can go on."""
        with self._cv:
            if reason is None and not self._closing:
                self._jobs.append(job)
            else:
                job.finish(reason or "cancelled", error)
            self._preparing -= 1
            self._cv.notify_all()

    def forget(self, tenant: str, conversation_id: str) -> None:
        with self._cv:
            self._forgets.append((tenant, conversation_id))
            self._cv.notify_all()

    def wake(self) -> None:
        with self._cv:
            self._cv.notify_all()

    def close(self) -> None:
        """No job joins from now on; returns once no submit is preparing."""
        with self._cv:
            self._closing = True
            self._cv.notify_all()
            while self._preparing:
                self._cv.wait()

    # The scheduler's side

    def wait(self, busy: bool) -> bool:
        """Block until there is something to do (``busy``: sequences are running);
        False when the engine is closing."""
        with self._cv:
            while not (self._closing or self._jobs or self._forgets or busy):
                self._cv.wait()
            return not self._closing

    def expire(self, now: float) -> None:
        """End the waiting jobs that were cancelled or ran out of time."""
        with self._cv:
            for job, reason in [(job, job.expired(now)) for job in self._jobs]:
                if reason is not None:
                    self._jobs.remove(job)
                    job.finish(reason)

    def next(self) -> J | None:
        """The oldest waiting job, out of the line; None when none waits."""
        with self._cv:
            return self._jobs.popleft() if self._jobs else None

    def take_forgets(self) -> list[tuple[str, str]]:
        with self._cv:
            gone, self._forgets = self._forgets, []
            return gone

    def drain(self) -> list[J]:
        """Every waiting job, out of the line (the scheduler ends them as it stops)."""
        with self._cv:
            jobs = list(self._jobs)
            self._jobs.clear()
            return jobs
