"""The app assembles and documents itself without any service running."""

from api.main import create_app
from shared.settings import load_settings


def test_openapi_lists_every_route() -> None:
    paths = create_app(load_settings()).openapi()["paths"]
    for path in ("/v1/jobs", "/v1/jobs/{job_id}", "/v1/jobs/{job_id}/events",
                 "/v1/jobs/{job_id}/cancel", "/invocations", "/v1/chat/completions",
                 "/v1/models", "/healthz", "/readyz"):
        assert path in paths, path


def test_async_caller_fields_are_documented() -> None:
    spec = create_app(load_settings()).openapi()
    assert "/v1/webhooks/secret" in spec["paths"]
    request = spec["components"]["schemas"]["JobRequest"]["properties"]
    for name in ("webhook", "webhook_events", "priority", "cancel_after"):
        assert len(request[name].get("description", "")) > 40, name
    assert "Standard Webhooks" in request["webhook"]["description"]
    for path in ("/v1/jobs", "/invocations"):
        params = {p["name"]: p for p in spec["paths"][path]["post"]["parameters"]}
        assert "409" in params["Idempotency-Key"]["description"]
    job = spec["components"]["schemas"]["Job"]["properties"]
    assert {"priority", "cancel_at", "webhook_deliveries"} <= set(job)
