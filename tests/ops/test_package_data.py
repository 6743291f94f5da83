"""An installed chatq (the Docker image installs the package) carries the browser files."""

from __future__ import annotations

import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def test_the_wheel_carries_every_file_under_api_static(tmp_path: Path) -> None:
    source = tmp_path / "src"  # build a copy: setuptools writes build/ next to the sources
    for name in ("api", "shared", "workers", "ops"):
        shutil.copytree(ROOT / name, source / name,
                        ignore=shutil.ignore_patterns("__pycache__"))
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(ROOT / name, source / name)
    subprocess.run([sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "--no-index",
                    "--no-build-isolation", "-w", str(tmp_path / "dist"), str(source)],
                   check=True, capture_output=True, timeout=300)
    [wheel] = (tmp_path / "dist").glob("chatq-*.whl")
    shipped = set(zipfile.ZipFile(wheel).namelist())
    static = {p.relative_to(ROOT).as_posix()
              for p in (ROOT / "api" / "static").rglob("*") if p.is_file()}
    assert "api/static/playground/index.html" in static
    assert static - shipped == set()
    scripts = {p.relative_to(ROOT).as_posix() for p in (ROOT / "shared" / "lua").rglob("*.lua")}
    assert "shared/lua/hooks/settle.lua" in scripts and "shared/lua/start.lua" in scripts
    assert scripts - shipped == set()  # an installed chatq runs its Redis scripts
