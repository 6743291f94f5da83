from pathlib import Path

import pytest

from shared.errors import ConfigError
from shared.registry import Registry
from shared.settings import DEFAULT_REGISTRY


def test_default_registry_finds_the_demo_model_inside_its_package() -> None:
    registry = Registry.load(DEFAULT_REGISTRY)
    spec = registry.get(None)
    assert spec is not None and spec.name == "smollm2-135m" and spec.queue == "cpu"
    path = registry.gguf_path(spec)
    assert path.name == "SmolLM2-135M-Instruct.Q4_1.gguf"
    assert path.read_bytes()[:4] == b"GGUF"


def write(tmp_path: Path, body: str) -> Path:
    path = tmp_path / "models.toml"
    path.write_text(body)
    return path


def test_two_models_on_one_queue_are_refused(tmp_path: Path) -> None:
    path = write(tmp_path, """
[models.a]
path = "a.gguf"
queue = "gpu0"
[models.b]
path = "b.gguf"
queue = "gpu0"
""")
    with pytest.raises(ConfigError, match="queue 'gpu0' has two models"):
        Registry.load(path)


def test_missing_gguf_file_is_named(tmp_path: Path) -> None:
    registry = Registry.load(write(tmp_path, '[models.a]\npath = "nowhere.gguf"\nqueue = "gpu0"\n'))
    with pytest.raises(ConfigError, match=r"nowhere\.gguf"):
        registry.gguf_path(registry.models["a"])


def test_model_without_a_source_is_refused(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="either `path` or `package`"):
        Registry.load(write(tmp_path, '[models.a]\nqueue = "gpu0"\n'))


def test_unknown_model_is_none() -> None:
    assert Registry.load(DEFAULT_REGISTRY).get("nope") is None
