"""``/playground``: a small chat page to try the models, served by chatq itself.

Plain HTML, CSS and JavaScript under ``api/static/playground/``: no build step,
no CDN. What must hold:

- The page uses only the public API (``/v1/models``, ``/v1/jobs``, the job's
  SSE stream, cancel), with the key the user types; the key stays in the
  browser tab (``sessionStorage``), never in chatq.
- It loads nothing but chatq's own files: the Content-Security-Policy allows
  scripts, styles, images and connections from chatq's origin only.
- Its URLs are relative, so it works under a path prefix too.
"""

from __future__ import annotations

from fastapi import APIRouter
from fastapi.responses import FileResponse

from api.assets import STATIC_DIR

router = APIRouter(include_in_schema=False)

PAGE = STATIC_DIR / "playground" / "index.html"
CSP = ("default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
       "connect-src 'self'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'")


@router.get("/playground")
async def playground() -> FileResponse:
    return FileResponse(PAGE, media_type="text/html",
                        headers={"Cache-Control": "no-cache", "Content-Security-Policy": CSP})
