"""The third-party browser assets chatq serves itself: Swagger UI, ReDoc and their fonts.

Closed networks cannot reach a CDN, so ``/docs`` and ``/redoc`` load these
files from ``api/static/vendor/``. What must hold:

- Every file there is a byte-for-byte copy of a file in an npm release
  tarball, and ``api/static/vendor/manifest.json`` records the package, its
  version, the tarball's npm ``integrity`` (sha512) and the file's sha256.
- ``check`` finds every recorded file with its sha256 and no file that is not
  recorded (``tests/ops/test_vendor_assets.py`` runs it).
- ``fetch`` (where npm reaches its registry) runs ``npm pack NAME@VERSION``,
  refuses a tarball whose sha512 is not the recorded integrity, copies the
  files and records their sha256. Nothing is ever fetched at run time.

    python -m ops.vendor_assets check
    python -m ops.vendor_assets fetch   # after setting a package's version and
                                        # integrity (npm view NAME@VERSION dist.integrity)
"""

from __future__ import annotations

import argparse
import base64
import hashlib
import json
import subprocess
import sys
import tarfile
import tempfile
from pathlib import Path
from typing import Any

VENDOR_DIR = Path(__file__).resolve().parents[1] / "api" / "static" / "vendor"
MANIFEST = "manifest.json"


def load_manifest(vendor_dir: Path = VENDOR_DIR) -> dict[str, Any]:
    manifest: dict[str, Any] = json.loads((vendor_dir / MANIFEST).read_text())
    return manifest


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def check(vendor_dir: Path = VENDOR_DIR) -> list[str]:
    """Problems with the vendored files (empty when every file matches the manifest)."""
    recorded = {local: entry.get("sha256", "")
                for package in load_manifest(vendor_dir)["packages"].values()
                for local, entry in package["files"].items()}
    problems = []
    for local, digest in recorded.items():
        path = vendor_dir / local
        if not path.is_file():
            problems.append(f"{local}: missing")
        elif sha256(path) != digest:
            problems.append(f"{local}: sha256 {sha256(path)} is not the recorded {digest!r}")
    for path in sorted(p for p in vendor_dir.rglob("*") if p.is_file()):
        local = path.relative_to(vendor_dir).as_posix()
        if local != MANIFEST and local not in recorded:
            problems.append(f"{local}: not recorded in {MANIFEST}")
    return problems


def _integrity(tarball: Path) -> str:
    return "sha512-" + base64.b64encode(hashlib.sha512(tarball.read_bytes()).digest()).decode()


def _pack(name: str, version: str, into: Path) -> Path:
    out = subprocess.run(["npm", "pack", f"{name}@{version}", "--json", "--pack-destination",
                          str(into)], check=True, capture_output=True, text=True, cwd=into)
    return into / json.loads(out.stdout)[0]["filename"]


def fetch_package(name: str, package: dict[str, Any], vendor_dir: Path, work: Path) -> None:
    tarball = _pack(name, package["version"], work)
    if _integrity(tarball) != package["integrity"]:
        raise SystemExit(f"{name}@{package['version']}: tarball integrity {_integrity(tarball)} "
                         f"is not the recorded {package['integrity']}")
    with tarfile.open(tarball) as archive:
        for local, entry in package["files"].items():
            member = archive.extractfile(f"package/{entry['from']}")
            if member is None:
                raise SystemExit(f"{name}: {entry['from']} is not a file in the tarball")
            target = vendor_dir / local
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_bytes(member.read())
            entry["sha256"] = sha256(target)


def fetch(vendor_dir: Path = VENDOR_DIR) -> None:
    manifest = load_manifest(vendor_dir)
    with tempfile.TemporaryDirectory() as tmp:
        for name, package in manifest["packages"].items():
            fetch_package(name, package, vendor_dir, Path(tmp))
            print(f"{name}@{package['version']}: {len(package['files'])} files")
    (vendor_dir / MANIFEST).write_text(json.dumps(manifest, indent=2) + "\n")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("command", choices=["check", "fetch"])
    args = parser.parse_args(argv)
    if args.command == "fetch":
        fetch()
    problems = check()
    for problem in problems:
        print(problem, file=sys.stderr)
    return 1 if problems else 0


if __name__ == "__main__":
    raise SystemExit(main())
