"""Helpers of the fault suite: real processes, killed and restarted on purpose.

Each test states its bound and prints what it measured (recovery time, clients
served, memory), so the figures can be quoted (run with ``-s`` to see them).
"""

from __future__ import annotations

import resource
import time
from typing import Any

import httpx
import pytest
import redis

from shared.events import Transition
from tests.conftest import Chatq

# The stacks of the fault suite beat every 0.5 s and are declared gone after 3 s.
HEARTBEAT_TTL_S = 3.0


@pytest.fixture(autouse=True, scope="session")
def _many_open_files() -> None:
    """1,000 streams need more than the usual 1,024 descriptors (API and client)."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    wanted = 8192 if hard == resource.RLIM_INFINITY else min(8192, hard)
    if soft < wanted:
        resource.setrlimit(resource.RLIMIT_NOFILE, (wanted, hard))


_FIGURES: list[str] = []


def report(name: str, **figures: Any) -> None:
    """One line of figures, for the README's reliability section (printed at the end of
    the run, ``-q`` or not)."""
    shown = ", ".join(f"{k}={v:.2f}" if isinstance(v, float) else f"{k}={v}"
                      for k, v in figures.items())
    _FIGURES.append(f"{name}: {shown}")


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    if _FIGURES:
        terminalreporter.section("fault figures")
        for line in _FIGURES:
            terminalreporter.write_line(line)


def transitions(chatq: Chatq, job_id: str) -> list[Transition]:
    client = redis.Redis.from_url(chatq.redis_url, decode_responses=True)
    try:
        return [t for t in (Transition.from_fields(f)
                            for _, f in client.xrange("chatq:transitions"))
                if t.job_id == job_id]
    finally:
        client.close()


def wait_status(client: httpx.Client, job_id: str, statuses: set[str], timeout: float,
                min_output: int = 0) -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    while True:
        job: dict[str, Any] = client.get(f"/v1/jobs/{job_id}").json()
        if job["status"] in statuses and len(job["output"]) >= min_output:
            return job
        assert time.monotonic() < deadline, f"job not {statuses} after {timeout} s: {job}"
        time.sleep(0.05)


def rss_peak_mb(pid: int) -> float:
    """The process's peak resident memory (VmHWM), in MiB."""
    with open(f"/proc/{pid}/status") as status:
        for line in status:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    return float("nan")
