"""API keys and tenants: 401 without a valid key (development with no keys configured
takes any), another tenant's job is 404."""

from __future__ import annotations

import httpx

from tests.conftest import Chatq
from tests.helpers import hi, submit, wait_done


def test_development_without_keys_takes_any_key(chatq: Chatq) -> None:
    """As llama-server and Ollama do: an SDK that insists on some key just works."""
    with chatq.client(key="sk-anything") as c:
        assert c.get("/v1/models").status_code == 200
        assert c.get("/v1/queues").status_code == 200
        job = submit(c, hi(max_tokens=4))
        assert wait_done(c, job["id"])["status"] == "succeeded"
    with chatq.client() as dev:  # the same tenant as any other key
        assert dev.get(f"/v1/jobs/{job['id']}").status_code == 200


def test_development_default_answers_the_readme_curl_without_a_key(chatq: Chatq) -> None:
    """`curl -X POST .../v1/jobs -H 'Prefer: respond-async' -d '{...}'`: no key, and
    curl's default form content type."""
    with httpx.Client(base_url=chatq.base_url) as bare:
        response = bare.post("/v1/jobs", content=b'{"messages":[{"role":"user","content":"Hi"}]}',
                             headers={"Prefer": "respond-async",
                                      "Content-Type": "application/x-www-form-urlencoded"})
        assert response.status_code == 202, response.text
        assert wait_done(bare, response.json()["id"])["status"] == "succeeded"
        garbage = bare.post("/v1/jobs", content=b"messages=hi")
        assert garbage.status_code == 422


def test_health_and_metrics_need_no_key(chatq: Chatq) -> None:
    with chatq.client(key=None) as c:
        assert c.get("/healthz").status_code == 200
        assert c.get("/readyz").status_code == 200
        assert c.get("/metrics").status_code == 200


def test_tenants_see_only_their_own_jobs(make_stack) -> None:  # type: ignore[no-untyped-def]
    stack = make_stack(env={"CHATQ_API__KEYS": "key-alpha=alpha,key-beta=beta"})
    with (stack.client(key="key-alpha") as alpha, stack.client(key="key-beta") as beta,
          stack.client() as dev):
        job = submit(alpha, hi(max_tokens=8))
        assert wait_done(alpha, job["id"])["status"] == "succeeded"
        for method, path in (("GET", f"/v1/jobs/{job['id']}"),
                             ("GET", f"/v1/jobs/{job['id']}/events"),
                             ("POST", f"/v1/jobs/{job['id']}/cancel")):
            response = beta.request(method, path)
            assert response.status_code == 404, path
        # configured keys replace the development default: no anonymous access either
        assert dev.get(f"/v1/jobs/{job['id']}").status_code == 401
    with stack.client(key=None) as anonymous:
        for method, path in (("POST", "/v1/jobs"), ("GET", "/v1/models"),
                             ("POST", "/v1/chat/completions")):
            response = anonymous.request(method, path, json=hi())
            assert response.status_code == 401, path
            assert "Authorization: Bearer" in response.json()["error"]["message"]


def test_key_file(make_stack, tmp_path) -> None:  # type: ignore[no-untyped-def]
    keys = tmp_path / "keys"
    keys.write_text("# ops keys\nfile-key=gamma\n")
    stack = make_stack(env={"CHATQ_API__KEYS_FILE": str(keys)})
    with stack.client(key="file-key") as c:
        assert c.get("/v1/models").status_code == 200
    with stack.client(key="other") as c:
        for method, path in (("POST", "/v1/jobs"), ("GET", "/v1/jobs/job_x"),
                             ("GET", "/v1/models"), ("GET", "/v1/queues"),
                             ("POST", "/invocations")):
            response = c.request(method, path, json=hi())
            assert response.status_code == 401, path
            assert response.json()["error"]["code"] == "unauthorized"


def test_openai_path_errors_use_openai_error_object(client: httpx.Client) -> None:
    response = client.post("/v1/chat/completions", json={"model": "nope", "messages": [
        {"role": "user", "content": "hi"}]})
    assert response.status_code == 404
    error = response.json()["error"]
    assert set(error) == {"message", "type", "param", "code"}
    assert error["type"] == "not_found_error" and "nope" in error["message"]


def test_production_metrics_need_an_admin_key(make_stack) -> None:  # type: ignore[no-untyped-def]
    """/metrics names every queue, model and worker: an operator view in production."""
    admin = "ops-7d3f9a1c2b"
    stack = make_stack(with_worker=False, env={
        "CHATQ_ENV": "production", "CHATQ_API__KEYS": "key-alpha=alpha",
        "CHATQ_API__ADMIN_KEYS": admin})
    with stack.client(key=None) as anonymous, stack.client(key="key-alpha") as tenant:
        assert anonymous.get("/metrics").status_code == 401
        refused = tenant.get("/metrics")
        assert refused.status_code == 403
        assert "CHATQ_API__ADMIN_KEYS" in refused.json()["error"]["message"]
    with stack.client(key=admin) as operator:
        response = operator.get("/metrics")
    assert response.status_code == 200, response.text
    assert "chatq_redis_up" in response.text
