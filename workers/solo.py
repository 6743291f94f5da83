"""A suspect job runs alone in its worker.

A job whose worker died while running it comes back *suspect* (``deaths`` on its
record, set by ``shared/lua/requeue.lua``): it may be what killed the worker, and
beside other jobs in the batch it would take them down with it again. So a worker
runs a suspect job with nothing else generating: :class:`SoloGate` lets ordinary
jobs in side by side, holds a suspect one until those running have finished, and
holds new ones back until it is done (a waiting suspect job goes first, so a busy
queue cannot starve it). If the suspect job kills this worker too, recovery fails
it ``worker_lost``; the jobs that ran beside it before were not beside it this time.

The gate is taken before the job starts: a job waiting at it is still ``queued``
(no deadline runs, no heartbeat claims it).
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from contextlib import contextmanager

from shared.lifecycle import BlockingJobs


class SoloGate:
    """Ordinary jobs share the engine; a suspect job has it to itself."""

    def __init__(self) -> None:
        self._cv = threading.Condition()
        self._running = 0  # ordinary jobs inside
        self._solo = False  # a suspect job inside
        self._solo_waiting = 0

    @contextmanager
    def admit(self, alone: bool) -> Iterator[None]:
        with self._cv:
            if alone:
                self._solo_waiting += 1
                self._cv.wait_for(lambda: not self._solo and self._running == 0)
                self._solo_waiting -= 1
                self._solo = True
            else:
                self._cv.wait_for(lambda: not self._solo and not self._solo_waiting)
                self._running += 1
        try:
            yield
        finally:
            with self._cv:
                if alone:
                    self._solo = False
                else:
                    self._running -= 1
                self._cv.notify_all()


def is_suspect(jobs: BlockingJobs, job_id: str) -> bool:
    """The job's worker died while running it before (see the module docstring)."""
    record = jobs(jobs.ops.load(job_id)).record
    return record is not None and record.suspect
