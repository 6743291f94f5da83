"""Small helpers the tests share: polling a job until it is done."""

from __future__ import annotations

import time
from typing import Any

import httpx

TERMINAL = {"succeeded", "failed", "cancelled"}


def hi(text: str = "Say hello in one short sentence.", **fields: Any) -> dict[str, Any]:
    return {"messages": [{"role": "user", "content": text}], **fields}


def submit(client: httpx.Client, body: dict[str, Any], **headers: str) -> dict[str, Any]:
    response = client.post("/v1/jobs", json=body,
                           headers={"Prefer": "respond-async", **headers})
    assert response.status_code == 202, response.text
    job: dict[str, Any] = response.json()
    return job


def wait_done(client: httpx.Client, job_id: str, timeout: float = 60) -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        response = client.get(f"/v1/jobs/{job_id}")
        assert response.status_code == 200, response.text
        job: dict[str, Any] = response.json()
        if job["status"] in TERMINAL:
            return job
        time.sleep(0.05)
    raise AssertionError(f"job {job_id} not done after {timeout} s: {job}")
