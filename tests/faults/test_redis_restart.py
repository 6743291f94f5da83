"""Redis restarted while a job streams (append-only file on, as in production): the job
finishes, the open stream completes by itself, nothing is counted twice."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable

from tests.conftest import Chatq
from tests.e2e.test_streaming import assert_complete
from tests.faults.conftest import report, wait_status
from tests.helpers import LONG, SseStream, hi, parse_sse, submit, wait_done


def test_a_stream_outlives_a_redis_restart(make_stack: Callable[..., Chatq]) -> None:
    stack = make_stack(aof=True)
    with stack.client() as c:
        before = c.get("/v1/queues").json()["data"][0]["totals"].get("succeeded", 0)
        job = submit(c, hi(LONG, max_tokens=250, temperature=0))
        wait_status(c, job["id"], {"running"}, 60, min_output=10)
    stream = SseStream()
    errors: list[BaseException] = []

    def listen() -> None:
        try:
            with stack.client(timeout=180) as c, c.stream(
                    "GET", f"/v1/jobs/{job['id']}/events") as response:
                parse_sse(response.iter_lines(), stream)
        except BaseException as exc:
            errors.append(exc)

    listener = threading.Thread(target=listen)
    listener.start()
    time.sleep(0.5)
    restarted_at = time.monotonic()
    stack.restart_redis()
    restart_s = time.monotonic() - restarted_at
    listener.join(180)
    assert not listener.is_alive() and not errors, errors
    with stack.client() as c:
        final = wait_done(c, job["id"])
        after = c.get("/v1/queues").json()["data"][0]["totals"].get("succeeded", 0)
    assert final["status"] == "succeeded" and final["attempts"] == 1
    assert stream.text == final["output"]
    assert_complete(stream, final)
    assert after == before + 1  # counted once
    report("Redis restart mid-stream", redis_down_s=restart_s,
           tokens=final["usage"]["completion_tokens"])
