"""API keys and tenants: 401 without a valid key, another tenant's job is 404."""

from __future__ import annotations

import httpx

from tests.conftest import Chatq
from tests.helpers import hi, submit, wait_done


def test_missing_and_invalid_keys_are_401(chatq: Chatq) -> None:
    for key in (None, "not-a-key"):
        with chatq.client(key=key) as c:
            for method, path in (("POST", "/v1/jobs"), ("GET", "/v1/jobs/job_x"),
                                 ("GET", "/v1/models"), ("GET", "/v1/queues"),
                                 ("POST", "/invocations")):
                response = c.request(method, path, json=hi())
                assert response.status_code == 401, (key, path)
                assert response.json()["error"]["code"] == "unauthorized"
    with chatq.client(key=None) as c:
        assert "Authorization: Bearer" in c.get("/v1/models").json()["error"]["message"]


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
        # configured keys replace the development key
        assert dev.get(f"/v1/jobs/{job['id']}").status_code == 401


def test_key_file(make_stack, tmp_path) -> None:  # type: ignore[no-untyped-def]
    keys = tmp_path / "keys"
    keys.write_text("# ops keys\nfile-key=gamma\n")
    stack = make_stack(env={"CHATQ_API__KEYS_FILE": str(keys)})
    with stack.client(key="file-key") as c:
        assert c.get("/v1/models").status_code == 200
    with stack.client(key="other") as c:
        assert c.get("/v1/models").status_code == 401


def test_openai_path_errors_use_openai_error_object(client: httpx.Client) -> None:
    response = client.post("/v1/chat/completions", json={"model": "nope", "messages": [
        {"role": "user", "content": "hi"}]})
    assert response.status_code == 404
    error = response.json()["error"]
    assert set(error) == {"message", "type", "param", "code"}
    assert error["type"] == "not_found_error" and "nope" in error["message"]
