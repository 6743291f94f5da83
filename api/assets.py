"""chatq's own browser files (``api/static/``), served at ``/static``.

What must hold:

- Everything a chatq page loads (the docs pages' vendored Swagger UI, ReDoc and
  fonts; the playground's script and style) comes from here, so the pages work
  in a network that reaches nothing but chatq. The vendored files are pinned
  and checksummed in ``api/static/vendor/manifest.json`` (``ops/vendor_assets.py``).
- An unknown path (or a directory, or a way out of ``api/static``) answers a
  clean ``404`` in chatq's error shape (see :mod:`api.errors`), never a listing.
- Browsers revalidate (``Cache-Control: no-cache`` with the ETag), so an upgrade
  is seen at once and an unchanged file costs a ``304``.
- The files ship with the package (``[tool.setuptools.package-data]``), so an
  installed chatq (the Docker image) serves them too.
"""

from __future__ import annotations

from pathlib import Path

from fastapi import FastAPI
from fastapi.staticfiles import StaticFiles
from starlette.responses import Response
from starlette.types import Scope

STATIC_DIR = Path(__file__).resolve().parent / "static"
PREFIX = "/static"


class Assets(StaticFiles):
    """Starlette's StaticFiles, telling browsers to revalidate."""

    async def get_response(self, path: str, scope: Scope) -> Response:
        response = await super().get_response(path, scope)
        response.headers.setdefault("Cache-Control", "no-cache")
        return response


def url(path: str, root_path: str = "") -> str:
    """The URL of ``api/static/<path>`` under the app's root path."""
    return f"{root_path.rstrip('/')}{PREFIX}/{path}"


def mount(app: FastAPI) -> None:
    app.mount(PREFIX, Assets(directory=STATIC_DIR), name="static")
