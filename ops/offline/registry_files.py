"""Print the GGUF file of every model in the registry (``$CHATQ_REGISTRY``, else the
demo registry), one path a line, for ``bundle.sh``; fails naming a missing file.
A model served by an upstream has no file to carry."""

from __future__ import annotations

import sys

from shared.errors import ConfigError
from shared.registry import Registry
from shared.settings import load_settings


def main() -> int:
    registry = Registry.load(load_settings().registry)
    try:
        paths = [registry.gguf_path(spec) for spec in registry.local_models()]
    except ConfigError as exc:
        print(f"bundle: {exc.message}", file=sys.stderr)
        return 1
    print("\n".join(str(p) for p in paths))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
