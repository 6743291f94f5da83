"""``make run`` with an upstream queue from the environment: ``CHATQ_UPSTREAM_*`` become
a model on queue ``upstream`` in a derived registry (the registry's own models kept as
they are, their files as absolute paths), served by a worker of its own. A worker that
dies is started again (bounded, with backoff) instead of stopping the stack."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

from ops.devstack import Proc, Stack
from ops.run_local import Restarts, Supervisor, _plan, derived_registry, upstream_model
from shared.errors import ConfigError
from shared.registry import Registry
from shared.settings import DEFAULT_REGISTRY

ROOT = Path(__file__).resolve().parents[2]
VLLM = {"CHATQ_UPSTREAM_URL": "http://vllm:8000/v1", "CHATQ_UPSTREAM_MODEL": "qwen2.5-7b",
        "CHATQ_UPSTREAM_KIND": "vllm", "CHATQ_UPSTREAM_KEY_ENV": "CHATQ_TEST_VLLM_KEY"}


def test_the_environment_names_an_upstream_model() -> None:
    assert upstream_model({}) is None
    assert upstream_model(VLLM) == ("qwen2.5-7b", {"queue": "upstream", "upstream": {
        "url": "http://vllm:8000/v1", "kind": "vllm", "model": "qwen2.5-7b",
        "api_key_env": "CHATQ_TEST_VLLM_KEY"}})
    azure = upstream_model({"CHATQ_UPSTREAM_URL": "https://r.openai.azure.com/openai/"
                            "deployments/gpt4o?api-version=2024-10-21",
                            "CHATQ_UPSTREAM_NAME": "gpt4o"})
    assert azure is not None and azure[0] == "gpt4o" and azure[1]["upstream"]["kind"] == "azure"
    with pytest.raises(RuntimeError, match="needs CHATQ_UPSTREAM_MODEL"):
        upstream_model({"CHATQ_UPSTREAM_URL": "https://api.openai.com/v1"})


def test_the_derived_registry_keeps_every_model_and_adds_the_upstream(tmp_path: Path) -> None:
    registry = Registry.load(ROOT / "ops" / "models.two-queues.toml")
    name, table = upstream_model(VLLM) or ("", {})
    path = tmp_path / "elsewhere" / "models.toml"
    path.parent.mkdir()
    path.write_text(derived_registry(registry, name, table))
    derived = Registry.load(path)
    assert derived.queues == ["cpu", "cpu2", "upstream"]
    for spec in registry.models.values():
        again = derived.models[spec.name]
        assert again.file_path(derived.base) == spec.file_path(registry.base)
        assert again.model_dump(exclude={"path"}) == spec.model_dump(exclude={"path"})
    assert derived.ancestor == registry.ancestor
    assert derived.default_name == registry.default_name
    upstream = derived.models["qwen2.5-7b"].upstream
    assert upstream is not None and (upstream.kind, upstream.url) == ("vllm", VLLM[
        "CHATQ_UPSTREAM_URL"])
    with pytest.raises(RuntimeError, match="already has a model"):
        derived_registry(registry, "smollm2-135m", table)


def test_make_run_serves_the_derived_registry_and_starts_the_upstream_queue(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    for key, value in {**VLLM, "CHATQ_REGISTRY": str(DEFAULT_REGISTRY),
                       "CHATQ_TEST_VLLM_KEY": "sk-local", "CHATQ_RUN_QUEUES": ""}.items():
        monkeypatch.setenv(key, value)
    stack = Stack(tmp_path / "run")
    registry, queues = _plan(stack, tmp_path)
    assert queues == ["cpu", "upstream"]
    assert stack.env["CHATQ_REGISTRY"] == str(tmp_path / "models.upstream.toml")
    assert registry.for_queue("upstream").name == "qwen2.5-7b"
    assert "sk-local" not in (tmp_path / "models.upstream.toml").read_text()
    monkeypatch.delenv("CHATQ_TEST_VLLM_KEY")
    with pytest.raises(ConfigError, match="CHATQ_TEST_VLLM_KEY"):
        _plan(stack, tmp_path)  # the key variable must be set where the worker runs


def test_restarts_back_off_and_are_bounded_within_their_window() -> None:
    restarts = Restarts(limit=3, window_s=100, base_s=1, cap_s=3)
    assert [restarts.next_delay(t) for t in (0, 1, 2, 3)] == [1, 2, 3, None]
    assert restarts.next_delay(150) == 1  # the earlier restarts left the window


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def exits_soon(stack: Stack, name: str) -> Proc:
    return stack.spawn(name, [sys.executable, "-c", "raise SystemExit(3)"])


def wait_exited(proc: Proc) -> None:
    proc.popen.wait(30)


def test_a_dead_worker_is_started_again_after_its_backoff(tmp_path: Path) -> None:
    stack, clock = Stack(tmp_path / "run"), Clock()
    started: list[Proc] = []

    def restart() -> Proc:
        started.append(exits_soon(stack, "worker-cpu"))
        return started[-1]

    try:
        api = stack.spawn("api", [sys.executable, "-c", "import time; time.sleep(60)"])
        wait_exited(exits_soon(stack, "worker-cpu"))
        supervisor = Supervisor(stack, {"worker-cpu": restart}, clock=clock,
                                make_restarts=lambda: Restarts(limit=2, base_s=1))
        assert supervisor.poll() is None and started == []  # backing off: 1 s
        assert [p.name for p in stack.procs] == ["api"]
        clock.now = 1.0
        assert supervisor.poll() is None and len(started) == 1
        wait_exited(started[0])
        assert supervisor.poll() is None  # second restart, after 2 s
        clock.now = 3.0
        assert supervisor.poll() is None and len(started) == 2
        wait_exited(started[1])
        gave_up = supervisor.poll()  # out of restarts: the stack stops
        assert gave_up is started[1] and gave_up.popen.returncode == 3
        assert api.popen.poll() is None
    finally:
        stack.stop()


def test_any_other_process_that_exits_stops_the_stack(tmp_path: Path) -> None:
    stack = Stack(tmp_path / "run")
    try:
        worker = stack.spawn("worker-cpu", [sys.executable, "-c", "import time; time.sleep(60)"])
        api = exits_soon(stack, "api")
        wait_exited(api)
        supervisor = Supervisor(stack, {"worker-cpu": lambda: worker})
        assert supervisor.poll() is api
        assert worker.popen.poll() is None
    finally:
        stack.stop()
