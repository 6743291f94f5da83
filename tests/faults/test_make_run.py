"""``make run`` (``python -m ops.run_local``) keeps the local stack up when a worker dies:
the worker is started again, and the API serves jobs on it, instead of the whole stack
stopping (a crash, the OOM killer, a poison job)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from ops.devstack import ROOT, free_port
from shared.settings import DEV_API_KEY
from tests.conftest import TEST_ENV
from tests.helpers import hi, submit, wait_done


def until(check: Callable[[], Any], timeout: float, what: str, log: Path) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        try:
            found = check()
        except httpx.HTTPError:
            found = None
        if found:
            return found
        assert time.monotonic() < deadline, f"{what} not within {timeout} s:\n" + \
            log.read_text(errors="replace")[-3000:]
        time.sleep(0.2)


@pytest.fixture
def make_run(tmp_path: Path) -> Iterator[tuple[httpx.Client, Path, subprocess.Popen[bytes]]]:
    port = free_port()
    env = {**os.environ, **TEST_ENV, "CHATQ_DATA_DIR": str(tmp_path),
           "CHATQ_API_PORT": str(port), "CHATQ_FLOWER_PORT": str(free_port()),
           # nothing answers there: make run starts a redis-server of its own
           "CHATQ_REDIS_URL": f"redis://127.0.0.1:{free_port()}/0", "CHATQ_RUN_QUEUES": "cpu"}
    env.pop("CHATQ_MONGO_URL", None)
    log = tmp_path / "make-run.log"
    with log.open("wb") as out:
        proc = subprocess.Popen([sys.executable, "-m", "ops.run_local"], cwd=ROOT, env=env,
                                stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
    client = httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=30,
                          headers={"Authorization": f"Bearer {DEV_API_KEY}"})
    try:
        yield client, log, proc
    finally:
        client.close()
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGINT)  # Ctrl-C: make run stops its children
            try:
                proc.wait(60)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait(10)


def worker_pid(client: httpx.Client) -> int | None:
    [cpu] = [q for q in client.get("/v1/queues").json()["data"] if q["queue"] == "cpu"]
    return cpu["workers"][0]["pid"] if cpu["workers"] else None


def test_make_run_starts_a_dead_worker_again(
        make_run: tuple[httpx.Client, Path, subprocess.Popen[bytes]]) -> None:
    client, log, proc = make_run
    until(lambda: client.get("/readyz").status_code == 200, 300, "make run ready", log)
    first = until(lambda: worker_pid(client), 60, "the worker's heartbeat", log)
    os.killpg(first, signal.SIGKILL)  # the worker runs in a process group of its own
    second = until(lambda: (pid := worker_pid(client)) not in (None, first) and pid,
                   300, "a new worker", log)
    assert second != first and proc.poll() is None  # the stack stayed up
    assert "worker-cpu exited (-9); starting it again" in log.read_text()
    job = wait_done(client, submit(client, hi(max_tokens=4))["id"])
    assert job["status"] == "succeeded"
