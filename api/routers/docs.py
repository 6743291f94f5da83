"""``/docs`` (Swagger UI) and ``/redoc`` (ReDoc) that work with no network at all.

FastAPI's default pages load their JavaScript, CSS, favicon and fonts from a
CDN and Google Fonts; in a closed network they stay blank. What must hold:

- Both pages reference only chatq's own URLs: the vendored, pinned files under
  ``/static/vendor`` (:mod:`api.assets`) and ``/openapi.json``.
- Swagger UI's online validator is off (it would call validator.swagger.io).
- ReDoc gets its fonts (Montserrat, Roboto) from ``/static/docs/fonts.css``.
- A Content-Security-Policy lets the browser load from chatq's origin only, so
  whatever a vendored bundle links to (ReDoc 2.5's footer fetches its logo from
  cdn.redoc.ly) is refused by the browser, never fetched. The pages' one inline
  script (Swagger UI's set-up) is allowed by its hash.
- URLs respect the app's root path (chatq behind a path prefix).
"""

from __future__ import annotations

import base64
import hashlib
import re

from fastapi import APIRouter, Request
from fastapi.openapi.docs import get_redoc_html, get_swagger_ui_html
from fastapi.responses import HTMLResponse

from api import assets

router = APIRouter(include_in_schema=False)

SWAGGER_JS = "vendor/swagger-ui/swagger-ui-bundle.js"
SWAGGER_CSS = "vendor/swagger-ui/swagger-ui.css"
FAVICON = "vendor/swagger-ui/favicon-32x32.png"
REDOC_JS = "vendor/redoc/redoc.standalone.js"
REDOC_FONTS = "docs/fonts.css"


def content_security_policy(html: str) -> str:
    """Only chatq's origin; inline styles (both UIs set them) and the page's own inline
    scripts, by hash; data: images (Swagger UI's icons); blob: workers (ReDoc's search)."""
    hashes = [base64.b64encode(hashlib.sha256(script.encode()).digest()).decode()
              for script in re.findall(r"<script>(.*?)</script>", html, re.DOTALL)]
    scripts = " ".join(["'self'", *(f"'sha256-{h}'" for h in hashes)])
    return (f"default-src 'none'; script-src {scripts}; style-src 'self' 'unsafe-inline'; "
            "img-src 'self' data:; font-src 'self'; connect-src 'self'; "
            "worker-src 'self' blob:; base-uri 'none'; form-action 'none'; "
            "frame-ancestors 'none'")


def _page(html: str) -> HTMLResponse:
    return HTMLResponse(html, headers={"Content-Security-Policy": content_security_policy(html)})


def _root(request: Request) -> str:
    root: str = request.scope.get("root_path", "")
    return root.rstrip("/")


def _openapi_url(request: Request) -> str:
    return _root(request) + (request.app.openapi_url or "/openapi.json")


@router.get("/docs")
async def swagger_ui(request: Request) -> HTMLResponse:
    root = _root(request)
    page = get_swagger_ui_html(
        openapi_url=_openapi_url(request),
        title=f"{request.app.title} - API docs",
        swagger_js_url=assets.url(SWAGGER_JS, root),
        swagger_css_url=assets.url(SWAGGER_CSS, root),
        swagger_favicon_url=assets.url(FAVICON, root),
        swagger_ui_parameters={"validatorUrl": None},
    )
    return _page(bytes(page.body).decode())


@router.get("/redoc")
async def redoc(request: Request) -> HTMLResponse:
    root = _root(request)
    page = get_redoc_html(
        openapi_url=_openapi_url(request),
        title=f"{request.app.title} - ReDoc",
        redoc_js_url=assets.url(REDOC_JS, root),
        redoc_favicon_url=assets.url(FAVICON, root),
        with_google_fonts=False,
    )
    fonts = f'<link rel="stylesheet" href="{assets.url(REDOC_FONTS, root)}">\n</head>'
    return _page(bytes(page.body).decode().replace("</head>", fonts, 1))
