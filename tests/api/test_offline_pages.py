"""``/docs``, ``/redoc`` and ``/playground`` need nothing but chatq (plain HTTP, no services).

Every page references no absolute ``http(s)://`` or protocol-relative URL, and
every asset it references (scripts, styles, icons, the OpenAPI document, and
what the stylesheets import: fonts) answers ``200`` from chatq itself.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from html.parser import HTMLParser
from urllib.parse import urljoin, urlsplit

import pytest
from fastapi import FastAPI
from fastapi.testclient import TestClient

from api.main import create_app
from shared.settings import load_settings

PAGES = ("/docs", "/redoc", "/playground")
ABSOLUTE = re.compile(r"""(?:https?:)?//[\w.-]+""", re.IGNORECASE)


class AssetRefs(HTMLParser):
    """The URLs a page loads: script src, link href, img src, ReDoc's spec-url."""

    def __init__(self) -> None:
        super().__init__()
        self.refs: list[str] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        wanted = {"script": "src", "link": "href", "img": "src", "redoc": "spec-url"}.get(tag)
        for name, value in attrs:
            if name == wanted and value:
                self.refs.append(value)


def page_refs(url: str, html: str) -> list[str]:
    parser = AssetRefs()
    parser.feed(html)
    swagger_spec = re.findall(r"url: '([^']+)'", html)  # SwaggerUIBundle({url: '...'})
    return [urljoin(url, ref) for ref in parser.refs + swagger_spec]


def css_refs(url: str, css: str) -> list[str]:
    found = re.findall(r"""url\(\s*["']?([^"')]+)["']?\s*\)|@import\s+["']([^"']+)["']""", css)
    return [urljoin(url, a or b) for a, b in found if not (a or b).startswith("data:")]


@pytest.fixture(scope="module")
def app() -> FastAPI:
    return create_app(load_settings())


@pytest.fixture(scope="module")
def http(app: FastAPI) -> Iterator[TestClient]:
    # No `with`: the lifespan (Redis, MongoDB) is not needed to serve pages and files.
    yield TestClient(app, base_url="http://chatq.test")


def fetch_all(http: TestClient, page: str) -> dict[str, int]:
    """Status of the page's every asset, following stylesheets' url() and @import."""
    response = http.get(page)
    assert response.status_code == 200, page
    todo = page_refs(str(response.url), response.text)
    seen: dict[str, int] = {}
    while todo:
        url = todo.pop()
        if url in seen:
            continue
        asset = http.get(url)
        seen[url] = asset.status_code
        if asset.headers.get("content-type", "").startswith("text/css"):
            todo += css_refs(url, asset.text)
    return seen


@pytest.mark.parametrize("page", PAGES)
def test_page_references_no_absolute_url(http: TestClient, page: str) -> None:
    response = http.get(page)
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/html")
    assert ABSOLUTE.findall(response.text) == []


@pytest.mark.parametrize("page", PAGES)
def test_page_lets_the_browser_load_from_chatq_only(http: TestClient, page: str) -> None:
    policy = http.get(page).headers["content-security-policy"]
    directives = dict(d.strip().partition(" ")[::2] for d in policy.split(";"))
    assert directives["default-src"] == "'none'"
    assert "'unsafe-inline'" not in directives["script-src"]  # inline scripts only by hash
    for name, sources in directives.items():
        for source in sources.split():
            assert source in ("'self'", "'none'", "'unsafe-inline'", "data:", "blob:") or (
                source.startswith("'sha256-")), f"{page}: {name} {source}"


@pytest.mark.parametrize("page", PAGES)
def test_every_asset_of_the_page_answers_200_from_chatq(http: TestClient, page: str) -> None:
    statuses = fetch_all(http, page)
    assert statuses, f"{page} references no asset"
    assert all(urlsplit(url).netloc == "chatq.test" for url in statuses), statuses
    assert {url: s for url, s in statuses.items() if s != 200} == {}


def test_the_docs_load_the_pinned_swagger_ui_and_redoc_with_their_fonts(http: TestClient) -> None:
    docs = fetch_all(http, "/docs")
    assert "http://chatq.test/static/vendor/swagger-ui/swagger-ui-bundle.js" in docs
    assert "http://chatq.test/openapi.json" in docs
    redoc = fetch_all(http, "/redoc")
    assert "http://chatq.test/static/vendor/redoc/redoc.standalone.js" in redoc
    fonts = [url for url in redoc if url.endswith(".woff2")]
    assert len(fonts) == 6, fonts  # Montserrat and Roboto, 300/400/700
    assert "validatorUrl" in http.get("/docs").text  # Swagger UI's online validator is off


def test_pages_follow_the_root_path(app: FastAPI) -> None:
    behind_proxy = TestClient(app, base_url="http://chatq.test", root_path="/chatq")
    docs = behind_proxy.get("/docs").text
    assert 'href="/chatq/static/vendor/swagger-ui/swagger-ui.css"' in docs
    assert "url: '/chatq/openapi.json'" in docs
    assert 'spec-url="/chatq/openapi.json"' in behind_proxy.get("/redoc").text
    # the playground's URLs are relative to the page
    assert 'src="static/playground/playground.js"' in behind_proxy.get("/playground").text


def test_the_playground_loads_only_chatq_and_calls_only_the_public_api(
    http: TestClient, app: FastAPI
) -> None:
    page = http.get("/playground")
    assert "default-src 'none'" in page.headers["content-security-policy"]
    assert "connect-src 'self'" in page.headers["content-security-policy"]
    script = http.get("/static/playground/playground.js").text
    assert ABSOLUTE.findall(script) == []
    assert "sessionStorage" in script and "localStorage" not in script
    called = {"/" + re.sub(r"\$\{[^}]+\}", "{job_id}", path)
              for path in re.findall(r"""[`"](v1/[^`"]*)[`"]""", script)}
    assert called == {"/v1/models", "/v1/jobs", "/v1/jobs/{job_id}",
                      "/v1/jobs/{job_id}/events", "/v1/jobs/{job_id}/cancel"}
    assert called <= set(app.openapi()["paths"])


@pytest.mark.parametrize("path", ["/static/nope.js", "/static/vendor/", "/static/playground",
                                  "/static/%2e%2e/main.py", "/static/%2e%2e/%2e%2e/pyproject.toml"])
def test_unknown_static_paths_are_a_clean_404(http: TestClient, path: str) -> None:
    response = http.get(path)
    assert response.status_code == 404
    assert response.json()["error"]["code"] == "not_found"


def test_assets_are_revalidated_and_typed(http: TestClient) -> None:
    for path, kind in (("/static/playground/playground.js", "text/javascript"),
                       ("/static/vendor/swagger-ui/swagger-ui.css", "text/css"),
                       ("/static/vendor/fonts/roboto-latin-400-normal.woff2", "font/woff2")):
        response = http.get(path)
        assert response.headers["content-type"].startswith(kind), path
        assert response.headers["cache-control"] == "no-cache"
        again = http.get(path, headers={"If-None-Match": response.headers["etag"]})
        assert again.status_code == 304, path
