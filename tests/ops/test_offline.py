"""The offline bundle: models carried with checksums, restored only when they match,
and a smoke test that checks the registry and brings one job through a running chatq."""

from __future__ import annotations

import hashlib
import os
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest

from shared.registry import Registry
from shared.settings import DEFAULT_REGISTRY, DEV_API_KEY
from tests.conftest import Chatq

ROOT = Path(__file__).resolve().parents[2]
OFFLINE = ROOT / "ops" / "offline"


def run(argv: list[str], cwd: Path, **env: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(argv, check=False, cwd=cwd, capture_output=True, text=True,
                          timeout=300, env={**os.environ, "PYTHON": sys.executable, **env})


def sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


@pytest.fixture(scope="module")
def demo_model() -> Path:
    registry = Registry.load(DEFAULT_REGISTRY)
    return registry.gguf_path(registry.models[registry.default_name])


@pytest.fixture
def bundle(tmp_path: Path, demo_model: Path) -> Path:
    out = tmp_path / "bundle"
    result = run([str(OFFLINE / "bundle.sh"), str(out)], cwd=ROOT)  # models from the registry
    assert result.returncode == 0, result.stderr
    return out


def test_bundle_holds_models_manifest_compose_scripts_readme(
    bundle: Path, demo_model: Path
) -> None:
    copied = bundle / "models" / demo_model.name
    assert sha256(copied) == sha256(demo_model)
    manifest = (bundle / "models" / "MANIFEST.sha256").read_text().split()
    assert manifest == [sha256(demo_model), demo_model.name]
    for name in ("docker-compose.yml", "ops/models.prod.toml", "ops/env.example"):
        assert (bundle / name).is_file(), name
    for name in ("restore.sh", "smoke.sh"):
        assert os.access(bundle / name, os.X_OK), name
    readme = (bundle / "README.md").read_text()
    assert demo_model.name in readme and "./restore.sh" in readme and "./smoke.sh" in readme


def test_restore_places_models_that_match(bundle: Path, tmp_path: Path,
                                          demo_model: Path) -> None:
    target = tmp_path / "srv-models"
    result = run(["./restore.sh"], cwd=bundle, CHATQ_MODELS_DIR=str(target))
    assert result.returncode == 0, result.stderr
    assert sha256(target / demo_model.name) == sha256(demo_model)
    assert sorted(p.name for p in target.iterdir()) == [demo_model.name]


def test_restore_refuses_a_corrupted_model(bundle: Path, tmp_path: Path,
                                           demo_model: Path) -> None:
    model = bundle / "models" / demo_model.name
    with model.open("r+b") as f:  # flip one byte in the middle
        f.seek(model.stat().st_size // 2)
        byte = f.read(1)
        f.seek(-1, os.SEEK_CUR)
        f.write(bytes([byte[0] ^ 0xFF]))
    target = tmp_path / "srv-models"
    result = run(["./restore.sh"], cwd=bundle, CHATQ_MODELS_DIR=str(target))
    assert result.returncode != 0
    assert f"models/{demo_model.name}" in result.stderr and "REFUSING" in result.stderr
    assert not target.exists()  # nothing placed


def test_restore_refuses_a_missing_model(bundle: Path, demo_model: Path) -> None:
    (bundle / "models" / demo_model.name).unlink()
    result = run(["./restore.sh"], cwd=bundle)
    assert result.returncode != 0
    assert f"models/{demo_model.name} is missing" in result.stderr


def test_restore_refuses_a_corrupted_image_before_loading(bundle: Path) -> None:
    tar = bundle / "images" / "chatq_0.1.0.tar"
    tar.write_bytes(b"an image archive")
    (bundle / "images" / "chatq_0.1.0.tar.sha256").write_text(
        f"{hashlib.sha256(b'another archive').hexdigest()}  images/chatq_0.1.0.tar\n")
    result = run(["./restore.sh"], cwd=bundle)
    assert result.returncode != 0
    assert "images/chatq_0.1.0.tar does not match its checksum" in result.stderr
    assert "docker load" not in result.stdout


def check_command(registry: Path = DEFAULT_REGISTRY) -> str:
    """The registry check smoke.sh runs (outside Docker: this interpreter)."""
    return f"{sys.executable} -m shared.registry check {registry}"


def test_smoke_passes_against_a_running_chatq(chatq: Chatq) -> None:
    result = run([str(OFFLINE / "smoke.sh")], cwd=ROOT, CHATQ_URL=chatq.base_url,
                 CHATQ_API_KEY=DEV_API_KEY, CHATQ_SMOKE_TIMEOUT="90",
                 CHATQ_SMOKE_CHECK=check_command())
    assert result.returncode == 0, result.stdout + result.stderr
    assert "the model registry checks out" in result.stdout
    assert "ok: smollm2-135m (default) on queue cpu" in result.stdout
    assert "readyz is ready" in result.stdout
    assert "succeeded" in result.stdout


def test_smoke_fails_on_a_registry_that_does_not_check_out(chatq: Chatq, tmp_path: Path) -> None:
    bad = tmp_path / "models.toml"
    bad.write_text('[models.a]\npath = "a.gguf"\nqueue = "gpu0"\nn_batch = -1\n')
    result = run([str(OFFLINE / "smoke.sh")], cwd=ROOT, CHATQ_URL=chatq.base_url,
                 CHATQ_SMOKE_CHECK=check_command(bad))
    assert result.returncode != 0
    assert "the model registry does not check out" in result.stderr
    assert "model 'a': `n_batch` = -1: Input should be greater than or equal to 1" in (
        result.stderr)
    assert "readyz" not in result.stdout  # refused before anything else


def test_smoke_fails_when_chatq_is_not_ready(make_stack: Callable[..., Chatq]) -> None:
    no_worker = make_stack(with_worker=False)
    result = run([str(OFFLINE / "smoke.sh")], cwd=ROOT, CHATQ_URL=no_worker.base_url,
                 CHATQ_SMOKE_TIMEOUT="2", CHATQ_SMOKE_CHECK="skip")
    assert result.returncode != 0
    assert "readyz answered 503" in result.stderr and "cpu" in result.stderr


def test_a_model_served_by_an_upstream_has_no_file_to_bundle(tmp_path: Path,
                                                             demo_model: Path) -> None:
    registry = tmp_path / "models.toml"
    registry.write_text(DEFAULT_REGISTRY.read_text() + '\n[models.remote]\nqueue = "upstream"\n'
                        '[models.remote.upstream]\nurl = "http://vllm:8000/v1"\nmodel = "m"\n')
    result = run([sys.executable, "-m", "ops.offline.registry_files"], cwd=ROOT,
                 CHATQ_REGISTRY=str(registry))
    assert result.returncode == 0, result.stderr
    assert result.stdout.split() == [str(demo_model)]
