"""The Kubernetes example (ops/k8s/) parses and holds together: every manifest is a
known kind with a name; selectors match their pods' labels and Services reach a named
port; every CHATQ_ variable is a real chatq setting; ConfigMaps referenced exist and
Secrets are only referenced (no values in the repository); the registry ConfigMap is
ops/models.prod.toml and there is one worker Deployment per queue of it; the API runs
two replicas or more, all processes find Redis through the Sentinels."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from pydantic import BaseModel

from shared.redis_conn import SentinelTarget
from shared.registry import Registry
from shared.settings import Settings

ROOT = Path(__file__).resolve().parents[2]
K8S = ROOT / "ops" / "k8s"
API_VERSIONS = {"ConfigMap": "v1", "Service": "v1", "Deployment": "apps/v1",
                "StatefulSet": "apps/v1"}
WORKLOADS = {"Deployment", "StatefulSet"}
SECRET = "chatq-secrets"  # made by hand (kustomization.yaml says how), never committed
# Read outside Settings: logging (shared/logs.py), Flower's own, the Redis pod's script.
OTHER_ENV = {"CHATQ_LOG_LEVEL", "FLOWER_BASIC_AUTH", "MAXMEMORY"}


def manifests() -> list[dict[str, Any]]:
    docs = []
    for path in sorted(K8S.glob("*.yaml")):
        if path.name != "kustomization.yaml":
            docs += [d for d in yaml.safe_load_all(path.read_text()) if d is not None]
    return docs


def of_kind(*kinds: str) -> list[dict[str, Any]]:
    return [d for d in manifests() if d["kind"] in kinds]


def containers() -> Iterator[tuple[dict[str, Any], dict[str, Any]]]:
    """(workload, container) for every container of every workload."""
    for workload in of_kind(*WORKLOADS):
        for container in workload["spec"]["template"]["spec"]["containers"]:
            yield workload, container


def chatq_containers() -> Iterator[tuple[dict[str, Any], dict[str, Any]]]:
    return ((w, c) for w, c in containers() if c["image"].startswith("chatq"))


def setting_names() -> set[str]:
    """Every environment variable chatq's Settings reads (prefix CHATQ_, groups with __)."""
    names = set()
    for name, field in Settings.model_fields.items():
        group = field.annotation
        if isinstance(group, type) and issubclass(group, BaseModel):
            names |= {f"CHATQ_{name}__{sub}".upper() for sub in group.model_fields}
        else:
            names.add(f"CHATQ_{name}".upper())
    return names


def env_of(container: dict[str, Any]) -> dict[str, Any]:
    """The container's variables: the ConfigMap's, then its own (which win)."""
    config = {d["metadata"]["name"]: d["data"] for d in of_kind("ConfigMap")}
    env: dict[str, Any] = {}
    for source in container.get("envFrom", []):
        env.update(config[source["configMapRef"]["name"]])
    for var in container.get("env", []):
        env[var["name"]] = var.get("value", var.get("valueFrom"))
    return env


def test_the_kustomization_lists_every_manifest() -> None:
    kustomization = yaml.safe_load((K8S / "kustomization.yaml").read_text())
    assert kustomization["kind"] == "Kustomization"
    files = {p.name for p in K8S.glob("*.yaml")} - {"kustomization.yaml"}
    assert sorted(kustomization["resources"]) == sorted(files)


def test_every_manifest_is_a_known_kind_with_a_unique_name() -> None:
    seen = set()
    for doc in manifests():
        assert doc["apiVersion"] == API_VERSIONS[doc["kind"]], doc["kind"]
        key = (doc["kind"], doc["metadata"]["name"])
        assert key not in seen, key
        seen.add(key)
    assert not of_kind("Secret")  # secrets are referenced, never committed


def test_selectors_match_their_pods_and_services_reach_a_named_port() -> None:
    pods = []
    for workload in of_kind(*WORKLOADS):
        labels = workload["spec"]["template"]["metadata"]["labels"]
        selector = workload["spec"]["selector"]["matchLabels"]
        assert selector.items() <= labels.items(), workload["metadata"]["name"]
        ports = {p["name"] for c in workload["spec"]["template"]["spec"]["containers"]
                 for p in c.get("ports", [])}
        pods.append((labels, ports))
        if workload["kind"] == "StatefulSet":
            [service] = [s for s in of_kind("Service")
                         if s["metadata"]["name"] == workload["spec"]["serviceName"]]
            assert service["spec"]["clusterIP"] == "None"  # headless: pod-N.service names
    for service in of_kind("Service"):
        selector = service["spec"]["selector"]
        matched = [ports for labels, ports in pods if selector.items() <= labels.items()]
        assert len(matched) == 1, service["metadata"]["name"]
        for port in service["spec"]["ports"]:
            assert port["targetPort"] in matched[0], (service["metadata"]["name"], port)


def test_every_chatq_variable_is_a_real_setting() -> None:
    known = setting_names()
    assert "CHATQ_API__KEYS" in known and "CHATQ_REDIS_URL" in known  # the reader works
    for workload, container in containers():
        for name in env_of(container):
            assert name in known or name in OTHER_ENV, (workload["metadata"]["name"], name)


def test_config_maps_exist_and_secrets_are_only_referenced() -> None:
    config_maps = {d["metadata"]["name"] for d in of_kind("ConfigMap")}
    for workload in of_kind(*WORKLOADS):
        pod = workload["spec"]["template"]["spec"]
        mounts = {m["name"] for c in pod["containers"] for m in c.get("volumeMounts", [])}
        claims = {t["metadata"]["name"] for t in workload["spec"].get("volumeClaimTemplates", [])}
        volumes = {v["name"]: v for v in pod.get("volumes", [])}
        assert mounts <= volumes.keys() | claims, workload["metadata"]["name"]
        for volume in volumes.values():
            if "configMap" in volume:
                assert volume["configMap"]["name"] in config_maps
    for workload, container in chatq_containers():
        env = env_of(container)
        for name in ("CHATQ_MONGO_URL", "CHATQ_API__KEYS", "CHATQ_API__ADMIN_KEYS"):
            # production settings want them in every chatq process, from the Secret
            assert env[name] == {"secretKeyRef": {"name": SECRET, "key": name}}, (
                workload["metadata"]["name"], name)
        assert env["CHATQ_ENV"] == "production"


def test_the_registry_is_the_production_one_with_a_worker_per_queue(tmp_path: Path) -> None:
    [registry_map] = [d for d in of_kind("ConfigMap")
                      if d["metadata"]["name"] == "chatq-registry"]
    text = registry_map["data"]["models.toml"]
    assert text == (ROOT / "ops" / "models.prod.toml").read_text()  # a copy, kept equal
    (tmp_path / "models.toml").write_text(text)
    registry = Registry.load(tmp_path / "models.toml")
    served = {}
    for workload, container in chatq_containers():
        command = container["command"]
        if command[:3] != ["celery", "-A", "workers.app"]:
            continue
        queue = env_of(container)["CHATQ_WORKER__QUEUE"]
        assert command[command.index("-Q") + 1] == queue
        assert container["resources"]["limits"]["nvidia.com/gpu"] == 1
        assert "-P" not in command  # the pool and its size come from workers.app
        served[queue] = workload
    assert sorted(served) == sorted(registry.queues)
    for container in [c for _, c in chatq_containers()]:
        mounts = {m["mountPath"]: m for m in container.get("volumeMounts", [])}
        if "/etc/chatq" in mounts:
            assert mounts["/etc/chatq"]["readOnly"] is True
            assert env_of(container)["CHATQ_REGISTRY"] == "/etc/chatq/models.toml"


def test_api_replicas_webhooks_flower_and_redis_through_sentinels() -> None:
    by_name = {d["metadata"]["name"]: d for d in of_kind(*WORKLOADS)}
    assert by_name["chatq-api"]["spec"]["replicas"] >= 2
    assert by_name["chatq-api"]["spec"]["strategy"]["rollingUpdate"]["maxUnavailable"] == 0
    [api] = by_name["chatq-api"]["spec"]["template"]["spec"]["containers"]
    assert api["command"][:3] == ["uvicorn", "--factory", "api.main:create_app"]
    [hooks] = by_name["chatq-webhooks"]["spec"]["template"]["spec"]["containers"]
    assert hooks["command"][:3] == ["celery", "-A", "workers.webhooks.app"]
    assert hooks["image"] == api["image"] and "resources" not in hooks  # no GPU
    [flower] = by_name["chatq-flower"]["spec"]["template"]["spec"]["containers"]
    assert env_of(flower)["FLOWER_BASIC_AUTH"] == {
        "secretKeyRef": {"name": SECRET, "key": "FLOWER_BASIC_AUTH"}}
    [flower_service] = [s for s in of_kind("Service")
                        if s["metadata"]["name"] == "chatq-flower"]
    assert flower_service["spec"].get("type", "ClusterIP") == "ClusterIP"  # never public
    [config] = [d for d in of_kind("ConfigMap") if d["metadata"]["name"] == "chatq-env"]
    target = SentinelTarget.parse(config["data"]["CHATQ_REDIS_URL"])
    assert target is not None and len(target.hosts) == 3
    sentinels = by_name["redis-sentinel"]
    assert sentinels["spec"]["replicas"] == 3
    names = {f"redis-sentinel-{i}.{sentinels['spec']['serviceName']}" for i in range(3)}
    assert {h for h, _ in target.hosts} == names and {p for _, p in target.hosts} == {26379}
    script = sentinels["spec"]["template"]["spec"]["containers"][0]["command"][-1]
    assert f"sentinel monitor {target.master} " in script
    assert by_name["redis"]["spec"]["replicas"] == 3  # a master and two replicas


@pytest.mark.parametrize("name", ["redis", "redis-sentinel"])
def test_redis_pods_spread_over_nodes(name: str) -> None:
    [workload] = [w for w in of_kind("StatefulSet") if w["metadata"]["name"] == name]
    affinity = workload["spec"]["template"]["spec"]["affinity"]["podAntiAffinity"]
    [term] = affinity["preferredDuringSchedulingIgnoredDuringExecution"]
    assert term["podAffinityTerm"]["topologyKey"] == "kubernetes.io/hostname"
