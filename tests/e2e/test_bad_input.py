"""Bad input is answered clearly, before anything is queued."""

from __future__ import annotations

import httpx

from tests.helpers import hi


def test_empty_messages_names_the_field(client: httpx.Client) -> None:
    response = client.post("/v1/jobs", json={"messages": []})
    assert response.status_code == 422
    error = response.json()["error"]
    assert error["code"] == "invalid_request"
    assert error["details"][0]["field"] == "messages"


def test_wrong_type_names_the_field(client: httpx.Client) -> None:
    response = client.post("/v1/jobs", json=hi(max_tokens="many"))
    assert response.status_code == 422
    assert "max_tokens" in response.json()["error"]["message"]


def test_bad_role_names_the_field(client: httpx.Client) -> None:
    response = client.post("/v1/jobs", json={"messages": [{"role": "robot", "content": "x"}]})
    assert response.status_code == 422
    assert response.json()["error"]["details"][0]["field"] == "messages.0.role"


def test_malformed_json(client: httpx.Client) -> None:
    response = client.post("/v1/jobs", content=b'{"messages": [', headers={
        "Content-Type": "application/json"})
    assert response.status_code == 422
    assert response.json()["error"]["code"] == "invalid_request"


def test_unknown_model_lists_known_models(client: httpx.Client) -> None:
    response = client.post("/v1/jobs", json=hi(model="gpt-9"))
    assert response.status_code == 404
    error = response.json()["error"]
    assert error["code"] == "model_not_found"
    assert "gpt-9" in error["message"]
    assert error["details"]["models"] == ["smollm2-135m"]
