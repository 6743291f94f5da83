"""Two models on two queues, one worker each, in one stack (``ops/models.two-queues.toml``):
SmolLM2 on ``cpu``, Gemma 3 270M (assembled from its chunk packages) on ``cpu2``.

Each model's jobs run on its own queue and worker; the ancestor routes run on the
models the registry's ``[ancestor]`` table names; stopping one worker makes only
its model answer ``503``.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from tests.conftest import Chatq, new_stack, start_chatq
from tests.helpers import hi, submit, wait_done

ROOT = Path(__file__).resolve().parents[2]
REGISTRY = ROOT / "ops" / "models.two-queues.toml"
MODELS = {"cpu": "smollm2-135m", "cpu2": "gemma3-270m"}


@pytest.fixture(scope="module")
def two(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Chatq]:
    stack = new_stack(tmp_path_factory.mktemp("two-queues"), "two")
    stack.env["CHATQ_REGISTRY"] = str(REGISTRY)
    try:
        yield start_chatq(stack, queues=list(MODELS))
    finally:
        stack.stop()


@pytest.fixture
def c(two: Chatq) -> Iterator[httpx.Client]:
    with two.client(timeout=120) as client:
        yield client


def succeeded_on(c: httpx.Client) -> dict[str, int]:
    """Finished jobs per queue, from /v1/queues (recorded atomically as each job ends)."""
    return {q["queue"]: q["totals"].get("succeeded", 0) for q in c.get("/v1/queues").json()["data"]}


def test_each_model_runs_on_its_own_queue_and_worker(two: Chatq, c: httpx.Client) -> None:
    before = {q: int(two.heartbeat(q)["jobs_done"]) for q in MODELS}
    jobs = {q: submit(c, hi(model=m, max_tokens=8)) for q, m in MODELS.items()}  # both at once
    for queue, job in jobs.items():
        assert job["queue"] == queue and job["model"] == MODELS[queue], job
        done = wait_done(c, job["id"])
        assert done["status"] == "succeeded", done
        assert done["queue"] == queue and done["model"] == MODELS[queue]
        assert done["output"]
    for queue, model in MODELS.items():
        deadline = time.monotonic() + 10
        while int((beat := two.heartbeat(queue))["jobs_done"]) <= before[queue]:
            assert time.monotonic() < deadline, beat
            time.sleep(0.2)
        assert beat["queue"] == queue and beat["model"] == model
    gemma = two.heartbeat("cpu2")  # Gemma's options as llama.cpp read them back
    assert (gemma["n_ctx"], gemma["n_batch"], gemma["n_ubatch"]) == ("4096", "1024", "512")


def test_models_lists_both_with_their_live_workers(c: httpx.Client) -> None:
    data = {m["id"]: m for m in c.get("/v1/models").json()["data"]}
    assert {name: (m["queue"], m["live_workers"], m["ready"]) for name, m in data.items()} == {
        "smollm2-135m": ("cpu", 1, True), "gemma3-270m": ("cpu2", 1, True)}
    assert data["gemma3-270m"]["context_size"] == 4096
    assert c.get("/readyz").json()["queues"] == ["cpu", "cpu2"]


@pytest.mark.parametrize(("path", "extra", "queue"), [
    ("/office/Llama", {"google_access": False}, "cpu2"),
    ("/character/Llama", {"character_name": "Ada", "greeting": "Hello.",
                          "context": "A mathematician."}, "cpu"),
])
def test_ancestor_routes_run_on_their_configured_models(
    c: httpx.Client, path: str, extra: dict[str, object], queue: str
) -> None:
    before = succeeded_on(c)
    body = {"input_data": "Hi!", "db_id": f"db-{uuid.uuid4().hex[:8]}", **extra}
    response = c.post(path, json=body)
    assert response.status_code == 200, response.text
    assert isinstance(response.json(), str)
    after = succeeded_on(c)
    other = next(q for q in MODELS if q != queue)
    assert after[queue] == before[queue] + 1 and after[other] == before[other], (before, after)


def test_stopping_one_worker_makes_only_its_model_503(two: Chatq, c: httpx.Client) -> None:
    two.workers["cpu2"].stop()
    try:
        deadline = time.monotonic() + 15  # the heartbeat TTL passes
        while (response := c.post("/v1/jobs", json=hi(model="gemma3-270m", max_tokens=4),
                                  headers={"Prefer": "respond-async"})).status_code != 503:
            assert response.status_code == 202, response.text
            assert time.monotonic() < deadline, "gemma still admitted after its worker stopped"
            time.sleep(0.3)
        assert "no live worker on queue 'cpu2'" in response.json()["error"]["message"]
        job = submit(c, hi(model="smollm2-135m", max_tokens=4))
        assert wait_done(c, job["id"])["status"] == "succeeded"
        data = {m["id"]: m["ready"] for m in c.get("/v1/models").json()["data"]}
        assert data == {"smollm2-135m": True, "gemma3-270m": False}
        ready = c.get("/readyz")
        assert ready.status_code == 503 and "cpu2" in ready.json()["error"]["message"]
    finally:
        two.start_worker("cpu2")  # the module's stack as it was
