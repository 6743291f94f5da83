"""The production compose file validates, refuses to run without its secrets, and wires
one worker per GPU with its device reserved and the models mounted read-only, the
webhook worker from the CPU image, and (profile "upstream") an upstream queue's worker
from the CPU image. Flower is published on the loopback only; Redis has a memory limit
that never evicts a key; ops/env.example ships no secret compose would take."""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

from shared.registry import Registry
from shared.settings import is_placeholder

ROOT = Path(__file__).resolve().parents[2]
SECRETS = {"MONGO_PASSWORD": "pw", "CHATQ_API__KEYS": "key", "FLOWER_BASIC_AUTH": "u:p",
           "CHATQ_API__ADMIN_KEYS": "ops-key"}

pytestmark = pytest.mark.skipif(
    shutil.which("docker-compose") is None,
    reason="docker-compose is not installed (apt-get install docker-compose)")


def compose(*args: str, env: dict[str, str], tmp: Path) -> subprocess.CompletedProcess[str]:
    clean = {k: v for k, v in os.environ.items() if k not in SECRETS}
    # An empty --env-file: a developer's own .env must not stand in for the secrets.
    (tmp / "empty.env").write_text("")
    argv = ["docker-compose", "--env-file", str(tmp / "empty.env"), "-f", "docker-compose.yml",
            *args]
    return subprocess.run(argv, check=False, cwd=ROOT, env={**clean, **env},
                          capture_output=True, text=True, timeout=60)


def test_make_compose_check_passes() -> None:
    result = subprocess.run(["make", "-s", "compose-check"], check=False, cwd=ROOT,
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr


@pytest.mark.parametrize("missing", sorted(SECRETS))
def test_compose_refuses_without_a_secret(missing: str, tmp_path: Path) -> None:
    result = compose("config", "-q", env={k: v for k, v in SECRETS.items() if k != missing},
                     tmp=tmp_path)
    assert result.returncode != 0
    assert missing in result.stderr


def test_services_are_wired_for_production(tmp_path: Path) -> None:
    result = compose("config", env=SECRETS, tmp=tmp_path)
    assert result.returncode == 0, result.stderr
    services: dict[str, Any] = yaml.safe_load(result.stdout)["services"]
    assert set(services) == {"redis", "mongo", "api", "gpu0", "gpu1", "webhooks", "flower",
                             "upstream"}
    assert all(s["platform"] == "linux/amd64" for s in services.values())
    assert "--appendonly" in services["redis"]["command"]
    registry = Registry.load(ROOT / "ops" / "models.prod.toml")
    assert registry.queues == ["gpu0", "gpu1"]
    for index, queue in enumerate(registry.queues):
        worker = services[queue]
        assert worker["environment"]["CHATQ_WORKER__QUEUE"] == queue
        assert worker["command"][worker["command"].index("-Q") + 1] == queue
        (device,) = worker["deploy"]["resources"]["reservations"]["devices"]
        assert device["driver"] == "nvidia" and device["device_ids"] == [str(index)]
        assert device["capabilities"] == ["gpu"]
        mounts = {v["target"]: v for v in worker["volumes"]}
        assert mounts["/models"]["read_only"] is True
        assert mounts["/etc/chatq/models.toml"]["read_only"] is True
        assert worker["depends_on"]["redis"]["condition"] == "service_healthy"
        assert "healthcheck" in worker
    for spec in registry.models.values():
        assert spec.path is not None and str(spec.path).startswith("/models/")
    assert services["api"]["depends_on"]["mongo"]["condition"] == "service_healthy"
    assert services["flower"]["environment"]["FLOWER_BASIC_AUTH"] == "u:p"
    assert "mongo-data:/data/db" in str(services["mongo"]["volumes"]) or any(
        v.get("target") == "/data/db" for v in services["mongo"]["volumes"])


def test_the_webhook_worker_runs_from_the_cpu_image(tmp_path: Path) -> None:
    result = compose("config", env=SECRETS, tmp=tmp_path)
    assert result.returncode == 0, result.stderr
    services: dict[str, Any] = yaml.safe_load(result.stdout)["services"]
    hooks = services["webhooks"]
    assert hooks["image"] == services["api"]["image"]  # the CPU image, no model, no GPU
    assert "deploy" not in hooks and "volumes" not in hooks
    command = hooks["command"]
    assert command[:3] == ["celery", "-A", "workers.webhooks.app"]
    assert command[command.index("-Q") + 1] == "webhooks"
    assert hooks["environment"]["CHATQ_ENV"] == "production"
    assert hooks["healthcheck"]["test"][-2:] == ["ops.healthcheck", "webhooks"]


def test_an_upstream_worker_is_a_profile_on_the_cpu_image(tmp_path: Path) -> None:
    result = compose("config", env=SECRETS, tmp=tmp_path)
    assert result.returncode == 0, result.stderr
    services: dict[str, Any] = yaml.safe_load(result.stdout)["services"]
    worker = services["upstream"]
    assert worker["profiles"] == ["upstream"]  # off unless asked for
    assert worker["image"] == services["api"]["image"]  # no GPU, no model files
    assert "deploy" not in worker
    assert [v["target"] for v in worker["volumes"]] == ["/etc/chatq/models.toml"]
    command = worker["command"]
    assert command[:3] == ["celery", "-A", "workers.app"]
    assert command[command.index("-Q") + 1] == "upstream"
    assert "-P" not in command  # the thread pool with the model's slots (workers.app)
    environment = worker["environment"]
    assert environment["CHATQ_WORKER__QUEUE"] == "upstream"
    assert environment["UPSTREAM_API_KEY"] == ""  # from .env; never in the repository
    assert worker["healthcheck"]["test"][-2:] == ["ops.healthcheck", "worker"]
    example = (ROOT / "ops" / "models.prod.toml").read_text()
    assert 'api_key_env = "UPSTREAM_API_KEY"' in example


def services_of(tmp: Path) -> dict[str, Any]:
    result = compose("config", env=SECRETS, tmp=tmp)
    assert result.returncode == 0, result.stderr
    services: dict[str, Any] = yaml.safe_load(result.stdout)["services"]
    return services


def host_ip(port: str | dict[str, Any]) -> str | None:
    """The host address of a published port, in either of compose's renderings."""
    if isinstance(port, dict):
        return port.get("host_ip")
    parts = str(port).split(":")
    return parts[0] if len(parts) == 3 else None


def test_flower_is_published_on_the_loopback_only(tmp_path: Path) -> None:
    ports = services_of(tmp_path)["flower"]["ports"]
    assert ports and all(host_ip(p) == "127.0.0.1" for p in ports), ports


def test_redis_has_a_memory_limit_and_never_evicts(tmp_path: Path) -> None:
    command = services_of(tmp_path)["redis"]["command"]
    assert command[command.index("--maxmemory") + 1] == "2gb"
    assert command[command.index("--maxmemory-policy") + 1] == "noeviction"


def test_every_process_gets_the_admin_keys(tmp_path: Path) -> None:
    services = services_of(tmp_path)
    for name in ("api", "gpu0", "gpu1", "webhooks", "flower"):
        assert services[name]["environment"]["CHATQ_API__ADMIN_KEYS"] == "ops-key", name


def test_the_env_example_ships_no_secret_compose_would_take(tmp_path: Path) -> None:
    """Copied as it is, ops/env.example starts nothing: every secret is empty, so compose
    refuses (and no line holds a placeholder that production would refuse later)."""
    example = ROOT / "ops" / "env.example"
    values = dict(line.split("=", 1) for line in example.read_text().splitlines()
                  if line and not line.startswith("#"))
    assert set(SECRETS) <= set(values)
    assert not any(values[name] for name in SECRETS), values
    assert not any(is_placeholder(v.rpartition(":")[2]) for v in values.values() if v)
    clean = {k: v for k, v in os.environ.items() if k not in SECRETS}
    result = subprocess.run(["docker-compose", "--env-file", str(example), "-f",
                             "docker-compose.yml", "config", "-q"], check=False, cwd=ROOT,
                            env=clean, capture_output=True, text=True, timeout=60)
    assert result.returncode != 0
    assert any(name in result.stderr for name in SECRETS), result.stderr
