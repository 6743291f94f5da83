"""``GET /v1/models`` and ``GET /v1/models/{id}``: OpenAI's format with chatq's extras
(queue, context size, slots, live workers), and OpenAI's 404 for an unknown id."""

from __future__ import annotations

import httpx
import openai
import pytest

from shared.settings import DEV_API_KEY
from tests.conftest import Chatq

EXPECTED = {"id": "smollm2-135m", "object": "model", "created": 0, "owned_by": "chatq",
            "queue": "cpu", "context_size": 2048, "slots": 4, "default": True,
            "live_workers": 1, "ready": True}


def test_models_list_shows_queue_context_slots_and_live_workers(client: httpx.Client) -> None:
    body = client.get("/v1/models").json()
    assert body == {"object": "list", "data": [EXPECTED]}


def test_retrieve_a_model(client: httpx.Client) -> None:
    response = client.get("/v1/models/smollm2-135m")
    assert response.status_code == 200, response.text
    assert response.json() == EXPECTED


@pytest.mark.parametrize("model_id", ["nope", "org/nope", ""])
def test_unknown_model_is_404_in_openais_error_object_naming_the_known_models(
    client: httpx.Client, model_id: str
) -> None:
    response = client.get(f"/v1/models/{model_id}")
    assert response.status_code == 404
    error = response.json()["error"]
    assert set(error) == {"message", "type", "param", "code"}
    assert error["code"] == "model_not_found" and error["param"] is None
    assert f"{model_id!r}" in error["message"]
    assert "known models: smollm2-135m" in error["message"]


def test_the_openai_sdk_lists_and_retrieves_models(chatq: Chatq) -> None:
    with openai.OpenAI(base_url=f"{chatq.base_url}/v1", api_key=DEV_API_KEY,
                       max_retries=0) as sdk:
        assert [m.id for m in sdk.models.list()] == ["smollm2-135m"]
        model = sdk.models.retrieve("smollm2-135m")
        assert model.id == "smollm2-135m" and model.owned_by == "chatq"
        with pytest.raises(openai.NotFoundError, match="known models: smollm2-135m"):
            sdk.models.retrieve("nope")
