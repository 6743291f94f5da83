"""The line of jobs between the threads that submit and the scheduler thread
(:class:`workers.llama.pending.PendingWork`), with plain jobs: no model needed."""

from __future__ import annotations

import threading
from dataclasses import dataclass, field

from tests.workers.llama.test_engine import wait_until
from workers.llama.pending import PendingWork


@dataclass(eq=False)
class FakeJob:
    name: str
    deadline: float = float("inf")
    cancelled: bool = False
    ended: list[tuple[str, str | None]] = field(default_factory=list)

    def expired(self, now: float) -> str | None:
        if self.cancelled:
            return "cancelled"
        return "timeout" if now > self.deadline else None

    def finish(self, reason: str, error: str | None = None) -> None:
        self.ended.append((reason, error))


def submit(line: PendingWork[FakeJob], job: FakeJob, reason: str | None = None,
           error: str | None = None) -> None:
    assert line.begin()
    line.settle(job, reason, error)


def test_jobs_leave_the_line_in_submission_order() -> None:
    line: PendingWork[FakeJob] = PendingWork()
    jobs = [FakeJob(str(i)) for i in range(3)]
    for job in jobs:
        submit(line, job)
    assert [line.next(), line.next(), line.next(), line.next()] == [*jobs, None]
    assert all(not job.ended for job in jobs)


def test_a_job_that_could_not_be_prepared_ends_instead_of_joining() -> None:
    line: PendingWork[FakeJob] = PendingWork()
    job = FakeJob("bad")
    submit(line, job, "error", "the prompt does not fit")
    assert job.ended == [("error", "the prompt does not fit")]
    assert line.next() is None


def test_expired_waiting_jobs_end_and_the_others_keep_their_place() -> None:
    line: PendingWork[FakeJob] = PendingWork()
    first, cancelled, late, last = (FakeJob("a"), FakeJob("b", cancelled=True),
                                    FakeJob("c", deadline=5.0), FakeJob("d"))
    for job in (first, cancelled, late, last):
        submit(line, job)
    line.expire(now=10.0)
    assert cancelled.ended == [("cancelled", None)]
    assert late.ended == [("timeout", None)]
    assert [line.next(), line.next(), line.next()] == [first, last, None]


def test_forgotten_conversations_are_handed_over_once() -> None:
    line: PendingWork[FakeJob] = PendingWork()
    line.forget("team-a", "c1")
    line.forget("team-b", "c2")
    assert line.take_forgets() == [("team-a", "c1"), ("team-b", "c2")]
    assert line.take_forgets() == []


def test_the_scheduler_wakes_for_a_job_a_forget_or_the_close() -> None:
    line: PendingWork[FakeJob] = PendingWork()
    woke: list[bool] = []

    def scheduler() -> None:
        while line.wait(busy=False):
            woke.append(True)
            if line.next() is None:
                line.take_forgets()
        woke.append(False)

    thread = threading.Thread(target=scheduler)
    thread.start()
    submit(line, FakeJob("a"))
    wait_until(lambda: len(woke) >= 1)
    line.forget("team-a", "c1")
    wait_until(lambda: len(woke) >= 2)
    line.close()
    thread.join(timeout=30)
    assert not thread.is_alive()
    assert woke[-1] is False  # the close ended its wait


def test_close_waits_for_a_job_being_prepared_and_then_nothing_joins() -> None:
    line: PendingWork[FakeJob] = PendingWork()
    assert line.begin()  # a submit is preparing a job
    closed = threading.Event()
    closer = threading.Thread(target=lambda: (line.close(), closed.set()))
    closer.start()
    wait_until(lambda: line.closing)
    assert not closed.is_set()  # still waiting for the submit
    job = FakeJob("late")
    line.settle(job, None, None)  # prepared, but the engine is closing: it ends
    closer.join(timeout=30)
    assert closed.is_set()
    assert job.ended == [("cancelled", None)]
    assert line.next() is None
    assert not line.begin()  # no submit starts preparing after the close


def test_draining_hands_over_every_waiting_job() -> None:
    line: PendingWork[FakeJob] = PendingWork()
    jobs = [FakeJob(str(i)) for i in range(2)]
    for job in jobs:
        submit(line, job)
    assert line.drain() == jobs
    assert line.next() is None
