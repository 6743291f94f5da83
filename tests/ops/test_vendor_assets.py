"""The vendored docs assets are exactly the pinned npm release files, and nothing else."""

from __future__ import annotations

import re
import shutil
from pathlib import Path

from ops import vendor_assets


def test_every_package_is_pinned_with_integrity_and_license() -> None:
    packages = vendor_assets.load_manifest()["packages"]
    assert {"swagger-ui-dist", "redoc"} <= packages.keys()
    for name, package in packages.items():
        assert re.fullmatch(r"\d+\.\d+\.\d+", package["version"]), name
        assert package["integrity"].startswith("sha512-"), name
        assert package["license"], name
        for local, entry in package["files"].items():
            assert re.fullmatch(r"[0-9a-f]{64}", entry["sha256"]), local


def test_vendored_files_match_their_recorded_sha256() -> None:
    assert vendor_assets.check() == []


def test_check_names_a_changed_a_missing_and_an_unrecorded_file(tmp_path: Path) -> None:
    vendor = tmp_path / "vendor"
    shutil.copytree(vendor_assets.VENDOR_DIR, vendor)
    (vendor / "swagger-ui" / "swagger-ui.css").write_text("body{}")
    (vendor / "redoc" / "LICENSE").unlink()
    (vendor / "redoc" / "extra.js").write_text("alert(1)")
    problems = "\n".join(vendor_assets.check(vendor))
    assert "swagger-ui/swagger-ui.css: sha256" in problems
    assert "redoc/LICENSE: missing" in problems
    assert "redoc/extra.js: not recorded" in problems
