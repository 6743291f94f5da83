"""Request validation of ``/v1/completions`` and ``/v1/embeddings``, without services:
what is taken, what is refused and which field the refusal names."""

from __future__ import annotations

import base64
import struct
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import anyio
import pytest
from pydantic import ValidationError

from api.admission import admit
from api.main import create_app
from api.routers.completions import CompletionRequest, legacy_logprobs
from api.routers.embeddings import EmbeddingRequest, response
from shared import vectors
from shared.errors import InvalidRequest, UnsupportedParameter
from shared.events import LogprobEntry, TopLogprobEntry
from shared.registry import ModelSpec, Registry
from shared.schemas import JobKind
from shared.settings import load_settings


def refused_field(exc: pytest.ExceptionInfo[Any]) -> str:
    if isinstance(exc.value, ValidationError):
        return ".".join(str(p) for p in exc.value.errors()[0]["loc"])
    assert isinstance(exc.value, UnsupportedParameter | InvalidRequest)
    assert exc.value.status == 400
    return str(exc.value.details[0]["field"])


def completion(**fields: Any) -> CompletionRequest:
    return CompletionRequest.model_validate({"prompt": "Hi", **fields})


def test_a_completion_takes_a_string_or_a_list_of_one() -> None:
    assert completion().text() == "Hi"
    assert completion(prompt=["Once"]).text() == "Once"
    job = completion(max_tokens=5, temperature=0, top_p=0.5, stop="\n", seed=7,
                     user="u1").to_work()
    given = job.sampling
    assert (given["max_tokens"], given["temperature"], given["top_p"], given["stop"],
            given["seed"]) == (5, 0, 0.5, "\n", 7)
    assert job.metadata == {"user": "u1"}
    assert completion().to_work().max_tokens == 16  # OpenAI's default for this path
    assert (job.kind, job.inputs, job.messages) == (JobKind.completion, ["Hi"], [])
    assert completion().sampling_overrides() == {}
    assert completion(presence_penalty=0.5, frequency_penalty=-1,
                      logit_bias={"42": -100}).sampling_overrides() == {
        "presence_penalty": 0.5, "frequency_penalty": -1, "logit_bias": {42: -100}}
    # Neutral values of the fields chatq does not implement are taken.
    completion(n=1, best_of=1, echo=False, suffix=None, logprobs=None).to_work()
    assert completion(logprobs=0).sampling_overrides() == {"logprobs": True}
    assert completion(logprobs=3).sampling_overrides() == {"logprobs": True,
                                                           "top_logprobs": 3}


def test_legacy_logprobs_shape() -> None:
    entries = [LogprobEntry(token=" Par", logprob=-0.5, bytes=[], top_logprobs=[
                   TopLogprobEntry(token=" Par", logprob=-0.5, bytes=[]),
                   TopLogprobEntry(token=" Lyon", logprob=-2.0, bytes=[])]),
               LogprobEntry(token="is", logprob=-0.1, bytes=[])]
    assert legacy_logprobs(entries, 10) == {
        "tokens": [" Par", "is"], "token_logprobs": [-0.5, -0.1],
        "top_logprobs": [{" Par": -0.5, " Lyon": -2.0}, {}], "text_offset": [10, 14]}


@pytest.mark.parametrize(("fields", "param"), [
    ({"prompt": ["a", "b"]}, "prompt"),
    ({"prompt": []}, "prompt"),
    ({"prompt": ""}, "prompt"),
    ({"prompt": [1, 2]}, "prompt"),
    ({"temperature": 2.5}, "temperature"),
    ({"max_tokens": 0}, "max_tokens"),
    ({"stop": ["", "x"]}, "stop"),
    ({"mirostat": 2}, "mirostat"),
    ({"presence_penalty": 3}, "presence_penalty"),
    ({"frequency_penalty": -2.5}, "frequency_penalty"),
    ({"logit_bias": {"x": 1}}, "logit_bias"),
    ({"logit_bias": {"12": -101}}, "logit_bias"),
    ({"logprobs": 6}, "logprobs"),
])
def test_a_completion_refuses_bad_fields(fields: dict[str, Any], param: str) -> None:
    with pytest.raises(ValidationError) as info:
        completion(**fields)
    assert refused_field(info) == param or refused_field(info).startswith(f"{param}.")


@pytest.mark.parametrize(("fields", "param"), [
    ({"echo": True, "logprobs": 1}, "echo"),
    ({"suffix": ""}, "suffix"),
    ({"best_of": 3}, "best_of"),
    ({"stream_options": {"include_usage": True}}, "stream_options"),  # without stream
    ({"n": 2}, "n"),
])
def test_a_completion_refuses_what_chatq_does_not_do(fields: dict[str, Any],
                                                     param: str) -> None:
    with pytest.raises(UnsupportedParameter) as info:
        completion(**fields).to_work()
    assert refused_field(info) == param


def embedding(**fields: Any) -> EmbeddingRequest:
    return EmbeddingRequest.model_validate({"input": "Hi", **fields})


def test_embedding_inputs() -> None:
    assert embedding().texts() == ["Hi"]
    assert embedding(input=["a", "b"]).texts() == ["a", "b"]
    assert embedding().encoding_format == "float"
    assert embedding(model="m").to_work().model == "m"
    assert embedding(input=["a", "b"]).to_work().inputs == ["a", "b"]


@pytest.mark.parametrize(("fields", "param"), [
    ({"input": [1, 2, 3]}, "input"),
    ({"input": [[1, 2], [3]]}, "input"),
    ({"input": []}, "input"),
    ({"input": ["a", ""]}, "input"),
    ({"input": ["x"] * 2049}, "input"),
    ({"encoding_format": "int8"}, "encoding_format"),
    ({"truncate": True}, "truncate"),
])
def test_embedding_refuses_bad_fields(fields: dict[str, Any], param: str) -> None:
    with pytest.raises(ValidationError) as info:
        embedding(**fields)
    assert refused_field(info).split(".")[0] == param


def test_embedding_refuses_dimensions() -> None:
    with pytest.raises(UnsupportedParameter) as info:
        embedding(dimensions=64).to_work()
    assert refused_field(info) == "dimensions"


def test_vectors_travel_as_base64_of_little_endian_float32() -> None:
    vector = [0.5, -0.25, 1.0]
    packed = vectors.pack(vector)
    assert list(struct.unpack("<3f", base64.b64decode(packed))) == vector
    assert vectors.unpack(packed) == vector


def test_response_shape() -> None:
    packed = [vectors.pack([1.0]), vectors.pack([0.0])]
    usage = {"prompt_tokens": 4, "completion_tokens": 0}
    body = response("m", packed, usage, "float")
    assert body == {"object": "list", "model": "m",
                    "data": [{"object": "embedding", "index": 0, "embedding": [1.0]},
                             {"object": "embedding", "index": 1, "embedding": [0.0]}],
                    "usage": {"prompt_tokens": 4, "total_tokens": 4}}
    as_base64 = response("m", packed, usage, "base64")
    assert [d["embedding"] for d in as_base64["data"]] == packed


def test_routes_are_documented() -> None:
    spec = create_app(load_settings()).openapi()
    assert {"/v1/completions", "/v1/embeddings"} <= set(spec["paths"])
    schemas = spec["components"]["schemas"]
    assert "encoding_format" in schemas["EmbeddingRequest"]["properties"]
    assert "prompt" in schemas["CompletionRequest"]["properties"]


def test_completions_are_refused_on_an_upstream_model() -> None:
    spec = ModelSpec.model_validate({
        "name": "up", "queue": "upstream", "embedding": True,
        "upstream": {"url": "https://api.example/v1", "model": "m"}})
    svc = SimpleNamespace(registry=Registry({"up": spec}, Path(".")), settings=load_settings())
    with pytest.raises(UnsupportedParameter) as caught:
        anyio.run(admit, svc, completion().to_work(), "t")
    assert caught.value.status == 400 and caught.value.details[0]["field"] == "model"
    assert svc.registry.embedding_name == "up"
