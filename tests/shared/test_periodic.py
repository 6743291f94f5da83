"""The periodic-thread helper behind every background loop: it runs its function
again and again, survives errors (logging them), and stops at once."""

from __future__ import annotations

import logging
import threading
import time

import pytest

from shared.periodic import Periodic


class Calls:
    """Counts calls; raises what ``errors`` lists, one per call, first."""

    def __init__(self, *errors: BaseException) -> None:
        self.errors = list(errors)
        self.count = 0
        self.reached = threading.Condition()

    def __call__(self) -> None:
        with self.reached:
            self.count += 1
            self.reached.notify_all()
        if self.errors:
            raise self.errors.pop(0)

    def wait_for(self, n: int, timeout: float = 10.0) -> None:
        with self.reached:
            assert self.reached.wait_for(lambda: self.count >= n, timeout), self.count


def test_it_calls_again_and_again_until_stopped() -> None:
    calls = Calls()
    thread = Periodic("chatq-test", 0.01, calls)
    assert thread.daemon and thread.name == "chatq-test"
    thread.start()
    calls.wait_for(3)
    thread.stop(timeout=5)
    assert not thread.is_alive()


def test_errors_never_end_it_and_are_logged(caplog: pytest.LogCaptureFixture) -> None:
    calls = Calls(ConnectionError("redis away"), RuntimeError("a bug"))
    thread = Periodic("chatq-test", 0.01, calls, expected=(ConnectionError,),
                      expected_message="round skipped: store away",
                      expected_level=logging.INFO)
    with caplog.at_level(logging.INFO, logger="shared.periodic"):
        thread.start()
        calls.wait_for(3)  # two failed rounds, then on as usual
        thread.stop(timeout=5)
    skipped = [r for r in caplog.records if r.getMessage() == "round skipped: store away"]
    assert [r.levelno for r in skipped] == [logging.INFO]
    assert skipped[0].error == "redis away"  # type: ignore[attr-defined]
    [bug] = [r for r in caplog.records if r.levelno == logging.ERROR]
    assert bug.getMessage() == "chatq-test: round failed" and bug.exc_info is not None


def test_stop_does_not_wait_out_the_interval() -> None:
    calls = Calls()
    thread = Periodic("chatq-test", 3600, calls)
    thread.start()
    started = time.monotonic()
    thread.stop(timeout=30)
    assert not thread.is_alive() and calls.count == 0
    assert time.monotonic() - started < 30  # did not wait the hour


def test_interval_zero_runs_at_once_and_waits_retry_s_after_an_error() -> None:
    gate = threading.Event()
    calls = Calls(OSError("lost"))

    def blocking_round() -> None:
        calls()
        gate.wait(10)  # a round that blocks by itself (reading a stream)

    thread = Periodic("chatq-test", 0, blocking_round, retry_s=0.01, expected=(OSError,))
    thread.start()
    calls.wait_for(2)  # the failed round, then (after retry_s) the next one
    thread.stop()
    gate.set()
    thread.join(10)
    assert not thread.is_alive()
