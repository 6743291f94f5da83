"""The submit window: a job written to Redis whose broker message never left (the API
died in between) runs anyway, within the sweeper's grace period plus a sweep."""

from __future__ import annotations

import time
from collections.abc import Callable

import redis

from shared.lifecycle import BlockingJobs, JobRecord, new_job_id, store_config
from shared.schemas import JobStatus, SamplingParams
from shared.settings import load_settings
from tests.conftest import Chatq
from tests.faults.conftest import report, wait_status

GRACE_S = 2.0
BOUND_S = GRACE_S + 5  # grace, a sweep, the worker taking it


def test_a_job_that_never_reached_the_broker_runs(make_stack: Callable[..., Chatq]) -> None:
    stack = make_stack(env={"CHATQ_JOBS__UNSENT_GRACE_S": str(GRACE_S)})
    client = redis.Redis.from_url(stack.redis_url, decode_responses=True)
    jobs = BlockingJobs(client, store_config(load_settings()))
    record = JobRecord(
        id=new_job_id(), status=JobStatus.queued, model="smollm2-135m", queue="cpu",
        tenant="dev", params=SamplingParams(max_tokens=8, temperature=0, top_p=1),
        messages=[{"role": "user", "content": "Say hi."}], created_at=time.time())
    assert jobs(jobs.ops.create(record)) is not None  # ...and the API died here
    written_at = time.monotonic()
    with stack.client() as c:
        running = wait_status(c, record.id, {"running", "succeeded"}, BOUND_S + 30)
        started_s = time.monotonic() - written_at
        final = wait_status(c, record.id, {"succeeded"}, 60)
    client.close()
    report("job without a broker message", started_s=started_s, bound_s=BOUND_S)
    assert running["attempts"] == 1 and final["output"]
    assert started_s <= BOUND_S
