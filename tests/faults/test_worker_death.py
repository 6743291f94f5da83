"""A worker that dies whole (SIGKILL of its process group: the host, the container)
loses no job: its jobs go back to their queue within the heartbeat TTL plus a few
seconds, whatever the broker's visibility timeout (an hour here), and finish on
a new worker, continuing after the text already streamed, neither lost nor doubled.

A job whose worker died may be what killed it (a poison job): it comes back suspect
and runs alone (the jobs of a killed batch finish one at a time), and a second death
fails it ``worker_lost`` with that reason instead of a third worker dying of it.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from itertools import pairwise

from tests.conftest import Chatq
from tests.e2e.test_streaming import assert_complete
from tests.faults.conftest import HEARTBEAT_TTL_S, report, transitions, wait_status
from tests.helpers import LONG, hi, stream_job, submit, wait_done

REQUEUE_BOUND_S = HEARTBEAT_TTL_S + 5  # heartbeat TTL + sweep interval + slack
FINISH_BOUND_S = 180  # requeue, a new worker's model load, then the rest of the answer


def kill_and_replace(stack: Chatq) -> float:
    """SIGKILL the worker's whole process group; start a new worker. The kill's time."""
    assert stack.worker is not None
    stack.worker.kill()
    killed_at = time.time()
    stack.worker = stack.start_worker(name="worker-cpu-2")
    return killed_at


def requeued_after(stack: Chatq, job_id: str, killed_at: float) -> float:
    [back] = [t for t in transitions(stack, job_id)
              if t.from_status == "running" and t.to == "queued"]
    assert back.code == "worker_lost"
    return back.at - killed_at


def second_run(stack: Chatq, job_id: str) -> tuple[float, float]:
    """When the job's last run started and when the job ended (transition times)."""
    moves = transitions(stack, job_id)
    started = [t.at for t in moves if t.to == "running"][-1]
    return started, moves[-1].at


def check_job(stack: Chatq, job_id: str, partial: str,
              bound_s: float = FINISH_BOUND_S) -> dict[str, object]:
    with stack.client() as c:
        final = wait_done(c, job_id, timeout=bound_s)
        assert final["status"] == "succeeded", final
        assert final["attempts"] == 2
        assert str(final["output"]).startswith(partial)  # nothing streamed was lost
        stream = stream_job(c, job_id)
    assert stream.text == final["output"]  # every token once, in order
    assert_complete(stream, final)
    return final


def test_a_killed_workers_job_is_requeued_and_finishes_on_a_new_worker(
    make_stack: Callable[..., Chatq],
) -> None:
    stack = make_stack()
    with stack.client() as c:
        job = submit(c, hi(LONG, max_tokens=200, temperature=0))
        partial = wait_status(c, job["id"], {"running"}, 60, min_output=20)["output"]
    killed_at = kill_and_replace(stack)
    check_job(stack, job["id"], partial)
    requeue_s = requeued_after(stack, job["id"], killed_at)
    finished_s = time.time() - killed_at
    report("worker SIGKILL, 1 job", requeue_s=requeue_s, finished_s=finished_s,
           bound_s=REQUEUE_BOUND_S)
    assert requeue_s <= REQUEUE_BOUND_S
    with stack.client() as c:  # the new worker runs new jobs as usual
        assert wait_done(c, submit(c, hi(max_tokens=8))["id"])["status"] == "succeeded"


def test_every_job_of_a_killed_batch_finishes(make_stack: Callable[..., Chatq]) -> None:
    stack = make_stack()
    slots = int(stack.heartbeat()["slots"])
    with stack.client() as c:
        jobs = [submit(c, hi(f"{LONG} ({i})", max_tokens=150, temperature=0))
                for i in range(slots)]
        partials = [wait_status(c, j["id"], {"running"}, 90, min_output=5)["output"]
                    for j in jobs]
    killed_at = kill_and_replace(stack)
    # Each was suspect after the kill, so each runs alone, one after the other: the last
    # may wait for all the others.
    for job, partial in zip(jobs, partials, strict=True):
        check_job(stack, job["id"], partial, bound_s=FINISH_BOUND_S * slots)
    # ... and their second runs never overlap.
    runs = sorted(second_run(stack, j["id"]) for j in jobs)
    assert all(end <= start for (_, end), (start, _) in pairwise(runs)), runs
    requeue_s = max(requeued_after(stack, j["id"], killed_at) for j in jobs)
    report(f"worker SIGKILL, {slots} jobs in flight", requeue_s=requeue_s,
           finished_s=time.time() - killed_at, bound_s=REQUEUE_BOUND_S)
    assert requeue_s <= REQUEUE_BOUND_S


def test_a_job_out_of_attempts_fails_worker_lost(make_stack: Callable[..., Chatq]) -> None:
    stack = make_stack(env={"CHATQ_CELERY__MAX_ATTEMPTS": "1"})
    with stack.client() as c:
        job = submit(c, hi(LONG, max_tokens=200, temperature=0))
        wait_status(c, job["id"], {"running"}, 60, min_output=5)
        killed_at = kill_and_replace(stack)
        final = wait_status(c, job["id"], {"failed"}, REQUEUE_BOUND_S + 5)
    assert final["error"]["code"] == "worker_lost"
    assert final["output"]  # the partial answer is kept
    report("worker SIGKILL, no attempts left", failed_s=time.time() - killed_at)


def test_a_job_whose_worker_dies_twice_fails_worker_lost_with_the_reason(
        make_stack: Callable[..., Chatq]) -> None:
    """As a poison job does: each run ends with its worker's death. With attempts left,
    the second death ends the job instead of a third worker dying of it."""
    stack = make_stack(env={"CHATQ_CELERY__MAX_ATTEMPTS": "5"})
    with stack.client() as c:
        job = submit(c, hi(LONG, max_tokens=1500, temperature=0))
        wait_status(c, job["id"], {"running"}, 60, min_output=5)
        kill_and_replace(stack)
        deadline = time.monotonic() + FINISH_BOUND_S  # its second run, on the new worker
        while True:
            view = c.get(f"/v1/jobs/{job['id']}").json()
            if view["attempts"] == 2 and view["status"] == "running":
                break
            assert time.monotonic() < deadline, view
            time.sleep(0.05)
        killed_at = kill_and_replace(stack)
        final = wait_status(c, job["id"], {"failed"}, REQUEUE_BOUND_S + 5)
        assert final["error"]["code"] == "worker_lost"
        assert "the worker died twice while running this job" in final["error"]["message"]
        assert final["attempts"] == 2 and final["output"]  # partial answer kept
        # the worker that replaced them runs other jobs as usual
        assert wait_done(c, submit(c, hi(max_tokens=8))["id"])["status"] == "succeeded"
    report("worker SIGKILL twice on one job", failed_s=time.time() - killed_at)
