"""Flower beside the stack: behind basic auth, it sees the worker and the finished job.
And every process of that stack logs JSON lines, with job id, queue and model on a job's lines."""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from typing import Any

import httpx
import pytest

from ops.devstack import free_port
from ops.flower_auth import basic_auth, check_basic_auth
from shared.errors import ConfigError
from shared.settings import load_settings
from tests.conftest import Chatq
from tests.helpers import hi, submit, wait_done

AUTH = ("ops", "s3cret-flower")


def poll(check: Callable[[], Any], timeout: float = 30) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        found = check()
        if found:
            return found
        time.sleep(0.5)
    raise AssertionError(f"not seen within {timeout} s")


def test_flower_sees_the_worker_and_the_finished_task(make_stack: Callable[..., Chatq]) -> None:
    chatq = make_stack()
    port = free_port()
    chatq.stack.start_flower(port, f"{AUTH[0]}:{AUTH[1]}")
    flower = httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=20)

    assert flower.get("/api/workers").status_code == 401
    assert flower.get("/api/tasks", auth=("ops", "wrong")).status_code == 401

    with chatq.client() as client:
        job = wait_done(client, submit(client, hi(max_tokens=8))["id"])
    assert job["status"] == "succeeded"

    def worker_seen() -> list[str]:
        response = flower.get("/api/workers", params={"refresh": 1}, auth=AUTH)
        assert response.status_code == 200, response.text
        return [name for name in response.json() if name.startswith("worker-cpu@")]

    assert poll(worker_seen)

    def task_seen() -> list[dict[str, Any]]:
        response = flower.get("/api/tasks", auth=AUTH)
        assert response.status_code == 200, response.text
        return [t for t in response.json().values()
                if t["name"] == "chatq.generate" and t["state"] == "SUCCESS"
                and t["args"] and job["id"] in t["args"]]

    (task,) = poll(task_seen)
    assert task["worker"].startswith("worker-cpu@")
    flower.close()
    check_logs(chatq, job["id"])


def check_logs(chatq: Chatq, job_id: str) -> None:
    lines: dict[str, list[dict[str, Any]]] = {}
    for name in ("api", "worker-cpu", "flower"):
        text = (chatq.stack.data_dir / f"{name}.log").read_text()
        lines[name] = [json.loads(line) for line in text.splitlines() if line.strip()]
        assert lines[name], f"{name} logged nothing"
    about_job = [entry for name in ("api", "worker-cpu") for entry in lines[name]
                 if entry.get("job_id") == job_id or job_id in entry["msg"]]
    # queued (API), received (worker parent), started, finished, task succeeded (child)
    assert len(about_job) >= 5, about_job
    for entry in about_job:
        assert entry.get("job_id") == job_id, entry
        assert entry.get("queue") == "cpu" and entry.get("model") == "smollm2-135m", entry
    assert any(e["logger"].startswith("uvicorn") for e in lines["api"])


def test_flower_outside_development_refuses_placeholder_or_missing_passwords() -> None:
    prod = load_settings(env="production", api={"keys": "k-3f9a2c71=acme"})
    for auth in ("", "admin:change-me", "ops:s3cret-flower,admin:changeme", "admin:",
                 "admin:password"):
        with pytest.raises(ConfigError):
            check_basic_auth(prod, auth)
    check_basic_auth(prod, "ops:s3cret-flower")
    check_basic_auth(load_settings(), "admin:change-me")  # development: anything goes
    argv = ["celery", "flower", "--basic-auth=ops:from-argv"]
    assert basic_auth({"FLOWER_BASIC_AUTH": "ops:from-env"}, argv) == "ops:from-argv"
    assert basic_auth({"FLOWER_BASIC_AUTH": "ops:from-env"}, ["flower"]) == "ops:from-env"
