"""The app assembles and documents itself without any service running."""

from api.main import create_app
from shared.settings import load_settings


def test_openapi_lists_every_route() -> None:
    paths = create_app(load_settings()).openapi()["paths"]
    for path in ("/v1/jobs", "/v1/jobs/{job_id}", "/v1/jobs/{job_id}/events",
                 "/v1/jobs/{job_id}/cancel", "/invocations", "/v1/chat/completions",
                 "/v1/models", "/healthz", "/readyz"):
        assert path in paths, path
