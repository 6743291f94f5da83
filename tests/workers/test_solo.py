"""The solo gate: ordinary jobs side by side; a suspect job alone, ahead of new ones."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable

from workers.solo import SoloGate


class Run:
    """A job at the gate in a thread of its own, held inside until released."""

    def __init__(self, gate: SoloGate, name: str, alone: bool, log: list[str]) -> None:
        self.inside = threading.Event()
        self.release = threading.Event()

        def body() -> None:
            with gate.admit(alone):
                log.append(f"+{name}")
                self.inside.set()
                self.release.wait(10)
                log.append(f"-{name}")

        self.thread = threading.Thread(target=body, daemon=True)
        self.thread.start()

    def done(self) -> None:
        self.release.set()
        self.thread.join(10)
        assert not self.thread.is_alive()


def until(check: Callable[[], bool], timeout: float = 5) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        assert time.monotonic() < deadline, "the state never came"
        time.sleep(0.005)


def waiting(gate: SoloGate, count: int) -> Callable[[], bool]:
    """``count`` threads wait on the gate (a state, not a duration)."""
    return lambda: len(gate._cv._waiters) >= count  # type: ignore[attr-defined]


def test_ordinary_jobs_run_side_by_side() -> None:
    gate, log = SoloGate(), []
    a, b = Run(gate, "a", False, log), Run(gate, "b", False, log)
    assert a.inside.wait(5) and b.inside.wait(5)
    a.done()
    b.done()


def test_a_suspect_job_waits_for_the_running_ones_and_holds_back_new_ones() -> None:
    gate, log = SoloGate(), []
    a = Run(gate, "a", False, log)
    assert a.inside.wait(5)
    s = Run(gate, "s", True, log)
    until(waiting(gate, 1))
    b = Run(gate, "b", False, log)  # came after the suspect one: waits behind it
    until(waiting(gate, 2))
    assert not s.inside.is_set() and not b.inside.is_set()
    a.done()
    assert s.inside.wait(5)
    assert not b.inside.is_set()  # nothing beside the suspect job
    s.done()
    assert b.inside.wait(5)
    b.done()
    assert log == ["+a", "-a", "+s", "-s", "+b", "-b"]


def test_two_suspect_jobs_run_one_after_the_other() -> None:
    gate, log = SoloGate(), []
    s1 = Run(gate, "s1", True, log)
    assert s1.inside.wait(5)
    s2 = Run(gate, "s2", True, log)
    until(waiting(gate, 1))
    s1.done()
    assert s2.inside.wait(5)
    s2.done()
    assert log == ["+s1", "-s1", "+s2", "-s2"]
