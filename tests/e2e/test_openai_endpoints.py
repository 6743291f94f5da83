"""``/v1/completions`` and ``/v1/embeddings`` with the official openai SDK against a
running chatq: both go through the queue to the worker (the response id is a job).

The demo model is tiny, so embeddings are checked for shape (dimension, order,
unit length, usage, base64 = float), not for meaning."""

from __future__ import annotations

import json
import math
from collections.abc import Iterator

import httpx
import litellm
import openai
import pytest
from langchain_openai import OpenAI, OpenAIEmbeddings
from llama_cpp import Llama

from shared import vectors
from shared.events import Transition
from shared.keys import Keys
from shared.registry import Registry
from shared.settings import DEFAULT_REGISTRY, DEV_API_KEY
from tests.conftest import Chatq

MODEL = "smollm2-135m"


@pytest.fixture
def sdk(chatq: Chatq) -> Iterator[openai.OpenAI]:
    with openai.OpenAI(base_url=f"{chatq.base_url}/v1", api_key=DEV_API_KEY,
                       max_retries=0) as client:
        yield client


def test_embeddings_of_two_inputs(sdk: openai.OpenAI) -> None:
    texts = ["The cat sat on the mat.", "Quarterly tax filings are due in April."]
    result = sdk.embeddings.create(model=MODEL, input=texts, encoding_format="float")
    assert result.object == "list" and result.model == MODEL
    assert [d.index for d in result.data] == [0, 1]
    assert {d.object for d in result.data} == {"embedding"}
    first, second = (d.embedding for d in result.data)
    assert len(first) == len(second) > 0
    assert math.isclose(math.fsum(x * x for x in first), 1.0, rel_tol=1e-4)  # unit length
    assert first != second
    assert result.usage.prompt_tokens > 0
    assert result.usage.total_tokens == result.usage.prompt_tokens
    alone = sdk.embeddings.create(model=MODEL, input=texts[1], encoding_format="float")
    assert len(alone.data) == 1
    assert alone.data[0].embedding == pytest.approx(second, abs=1e-5)  # batched = alone


def test_langchain_and_litellm_embed(chatq: Chatq) -> None:
    # LangChain's default sends tiktoken token ids (OpenAI's vocabulary, not the model's):
    # chatq refuses those, so it is told to send the texts.
    embedder = OpenAIEmbeddings(model=MODEL, base_url=f"{chatq.base_url}/v1",
                                api_key=DEV_API_KEY, check_embedding_ctx_length=False)  # type: ignore[arg-type]
    docs = embedder.embed_documents(["first text", "second text"])
    assert len(docs) == 2 and len(docs[0]) == len(docs[1]) > 0
    assert embedder.embed_query("first text") == pytest.approx(docs[0], abs=1e-5)
    response = litellm.embedding(model=f"openai/{MODEL}", input=["hello"],
                                 api_base=f"{chatq.base_url}/v1", api_key=DEV_API_KEY)
    assert len(response.data) == 1 and len(response.data[0]["embedding"]) == len(docs[0])
    assert response.usage.prompt_tokens > 0


def test_embeddings_run_as_a_job_on_the_models_queue(chatq: Chatq,
                                                     sdk: openai.OpenAI) -> None:
    r = chatq.redis()
    keys = Keys()
    last = r.xrevrange(keys.transitions(), count=1)
    since = f"({last[0][0]}" if last else "-"  # after the newest entry (exclusive)
    result = sdk.embeddings.create(model=MODEL, input=["through the queue"])
    moves = [Transition.from_fields(f) for _, f in r.xrange(keys.transitions(), min=since)]
    embedding_jobs = [job_id for job_id in {t.job_id for t in moves}
                      if r.hget(keys.job(job_id), "kind") == "embedding"]
    assert len(embedding_jobs) == 1
    [job_id] = embedding_jobs
    assert [t.to for t in moves if t.job_id == job_id] == ["queued", "running", "succeeded"]
    assert {t.queue for t in moves if t.job_id == job_id} == {"cpu"}
    job = r.hgetall(keys.job(job_id))
    stored = json.loads(job["result"])["embeddings"][0]
    assert vectors.unpack(stored) == pytest.approx(result.data[0].embedding, abs=1e-6)


def test_base64_decodes_to_the_float_vectors(sdk: openai.OpenAI, client: httpx.Client) -> None:
    texts = ["hello", "world"]
    floats = sdk.embeddings.create(model=MODEL, input=texts, encoding_format="float")
    raw = client.post("/v1/embeddings", json={"model": MODEL, "input": texts,
                                              "encoding_format": "base64"})
    assert raw.status_code == 200, raw.text
    assert all(isinstance(d["embedding"], str) for d in raw.json()["data"])
    # The SDK asks for base64 when no format is given, and decodes it itself.
    decoded = sdk.embeddings.create(model=MODEL, input=texts)
    for a, b in zip(floats.data, decoded.data, strict=True):
        assert b.embedding == pytest.approx(a.embedding, abs=1e-6)


def test_embeddings_default_model_and_job(client: httpx.Client) -> None:
    response = client.post("/v1/embeddings", json={"input": "no model named"})
    assert response.status_code == 200, response.text
    assert response.json()["model"] == MODEL


def test_completion_non_stream(sdk: openai.OpenAI, client: httpx.Client) -> None:
    completion = sdk.completions.create(model=MODEL, prompt="The capital of France is",
                                        max_tokens=12, temperature=0)
    assert completion.object == "text_completion"
    assert completion.id.startswith("job_")  # the chatq job id
    choice = completion.choices[0]
    assert choice.index == 0 and choice.text
    assert choice.finish_reason in ("stop", "length")
    assert completion.usage is not None
    assert completion.usage.prompt_tokens == 5  # the raw prompt, no chat template around it
    assert 0 < completion.usage.completion_tokens <= 12
    job = client.get(f"/v1/jobs/{completion.id}").json()
    assert job["status"] == "succeeded" and job["output"] == choice.text
    assert job["conversation_id"] is None  # a raw completion is no conversation
    assert job["kind"] == "completion"


def test_completion_prompt_as_list_of_one_and_stop(sdk: openai.OpenAI) -> None:
    completion = sdk.completions.create(model=MODEL, prompt=["1, 2, 3, 4,"], max_tokens=30,
                                        temperature=0, stop=[" 7"])
    text = completion.choices[0].text
    assert "7" not in text and completion.choices[0].finish_reason == "stop"


def test_completion_stream(sdk: openai.OpenAI, client: httpx.Client) -> None:
    chunks = list(sdk.completions.create(
        model=MODEL, prompt="Once upon a time", max_tokens=20, temperature=0, stream=True,
        stream_options={"include_usage": True}))
    assert {c.object for c in chunks} == {"text_completion"}
    assert len({c.id for c in chunks}) == 1
    with_choices = [c for c in chunks if c.choices]
    text = "".join(c.choices[0].text for c in with_choices)
    finishes = [c.choices[0].finish_reason for c in with_choices]
    assert finishes[-1] == "length" and all(f is None for f in finishes[:-1])
    usage = chunks[-1].usage
    assert chunks[-1].choices == [] and usage is not None
    assert usage.completion_tokens == 20 and usage.prompt_tokens > 0
    job = client.get(f"/v1/jobs/{chunks[0].id}").json()
    assert job["output"] == text
    greedy = sdk.completions.create(model=MODEL, prompt="Once upon a time", max_tokens=20,
                                    temperature=0)
    assert greedy.choices[0].text == text


def first_token(text: str) -> int:
    registry = Registry.load(DEFAULT_REGISTRY)
    vocab = Llama(model_path=str(registry.gguf_path(registry.models[MODEL])), vocab_only=True,
                  verbose=False)
    try:
        return int(vocab.tokenize(text.encode(), add_bos=False, special=False)[0])
    finally:
        vocab.close()


def test_completion_logit_bias_and_penalties_take_effect(sdk: openai.OpenAI) -> None:
    prompt = "The capital of France is"
    greedy = sdk.completions.create(model=MODEL, prompt=prompt, max_tokens=8,
                                    temperature=0).choices[0].text
    banned = first_token(greedy)
    biased = sdk.completions.create(model=MODEL, prompt=prompt, max_tokens=8, temperature=0,
                                    logit_bias={str(banned): -100}).choices[0].text
    assert biased != greedy and first_token(biased) != banned
    plain = sdk.completions.create(model=MODEL, prompt=prompt, max_tokens=16,
                                   temperature=0).choices[0].text
    for penalty in ({"presence_penalty": 2.0}, {"frequency_penalty": 2.0}):
        penalised = sdk.completions.create(model=MODEL, prompt=prompt, max_tokens=16,
                                           temperature=0, **penalty).choices[0].text
        assert penalised != plain, penalty


def test_logit_bias_outside_the_vocabulary_is_400(sdk: openai.OpenAI) -> None:
    for bias in ({"99999999": -100}, {"abc": 5}, {"5": 500}):
        with pytest.raises(openai.BadRequestError) as info:
            sdk.completions.create(model=MODEL, prompt="Hi", logit_bias=bias)
        assert isinstance(info.value.body, dict) and info.value.body["param"] == "logit_bias"


def test_langchain_and_litellm_complete(chatq: Chatq) -> None:
    llm = OpenAI(model=MODEL, base_url=f"{chatq.base_url}/v1", api_key=DEV_API_KEY,  # type: ignore[arg-type]
                 max_tokens=8, temperature=0)
    text = llm.invoke("The capital of France is")
    assert isinstance(text, str) and text
    assert "".join(llm.stream("The capital of France is")) == text
    response = litellm.text_completion(
        model=f"text-completion-openai/{MODEL}", prompt="The capital of France is",
        api_base=f"{chatq.base_url}/v1", api_key=DEV_API_KEY, max_tokens=8, temperature=0)
    assert response.choices[0].text == text


def test_completion_logprobs_add_up(sdk: openai.OpenAI) -> None:
    prompt = "The capital of France is"
    completion = sdk.completions.create(model=MODEL, prompt=prompt, max_tokens=10,
                                        temperature=0, logprobs=2)
    choice = completion.choices[0]
    lp = choice.logprobs
    assert lp is not None and lp.tokens and lp.token_logprobs and lp.top_logprobs
    assert "".join(lp.tokens) == choice.text
    assert completion.usage is not None
    assert len(lp.tokens) == completion.usage.completion_tokens
    assert all(x <= 0 for x in lp.token_logprobs)
    assert all(len(top) == 2 for top in lp.top_logprobs)
    assert lp.text_offset is not None and lp.text_offset[0] == len(prompt)
    chunks = list(sdk.completions.create(model=MODEL, prompt=prompt, max_tokens=10,
                                         temperature=0, logprobs=2, stream=True))
    tokens = [t for c in chunks if c.choices and c.choices[0].logprobs
              for t in c.choices[0].logprobs.tokens or []]
    assert tokens == lp.tokens


def test_completion_echo(sdk: openai.OpenAI) -> None:
    prompt = "The capital of France is"
    plain = sdk.completions.create(model=MODEL, prompt=prompt, max_tokens=6, temperature=0)
    echoed = sdk.completions.create(model=MODEL, prompt=prompt, max_tokens=6, temperature=0,
                                    echo=True)
    assert echoed.choices[0].text == prompt + plain.choices[0].text
    assert echoed.usage == plain.usage
    chunks = list(sdk.completions.create(model=MODEL, prompt=prompt, max_tokens=6,
                                         temperature=0, echo=True, stream=True))
    assert "".join(c.choices[0].text for c in chunks if c.choices) == echoed.choices[0].text


def test_completion_stream_ends_with_done(client: httpx.Client) -> None:
    body = {"model": MODEL, "prompt": "Hello", "max_tokens": 4, "stream": True}
    with client.stream("POST", "/v1/completions", json=body) as response:
        assert response.status_code == 200
        lines = [line for line in response.iter_lines() if line.startswith("data: ")]
    assert lines[-1] == "data: [DONE]"


@pytest.mark.parametrize(("fields", "param"), [
    ({"echo": True, "logprobs": 1}, "echo"),
    ({"suffix": "!"}, "suffix"),
    ({"best_of": 2}, "best_of"),
    ({"stream_options": {"include_usage": True}}, "stream_options"),  # without stream
    ({"n": 2}, "n"),
    ({"logprobs": 6}, "logprobs"),
    ({"prompt": ["a", "b"]}, "prompt"),
    ({"temperature": 5}, "temperature"),
    ({"max_tokens": 0}, "max_tokens"),
    ({"stop": ["a", "b", "c", "d", "e"]}, "stop"),
])
def test_completion_refusals_are_400_naming_the_param(
    sdk: openai.OpenAI, fields: dict[str, object], param: str
) -> None:
    body: dict[str, object] = {"model": MODEL, "prompt": "Hi", **fields}
    with pytest.raises(openai.BadRequestError) as info:
        sdk.completions.create(**body)  # type: ignore[call-overload]
    assert info.value.status_code == 400
    error = info.value.body
    assert isinstance(error, dict) and error["param"] == param
    assert error["type"] == "invalid_request_error"


def test_unknown_fields_are_400_naming_them(sdk: openai.OpenAI) -> None:
    with pytest.raises(openai.BadRequestError) as info:
        sdk.completions.create(model=MODEL, prompt="Hi", extra_body={"mirostat": 2})
    assert isinstance(info.value.body, dict) and info.value.body["param"] == "mirostat"
    with pytest.raises(openai.BadRequestError) as info:
        sdk.embeddings.create(model=MODEL, input="Hi", extra_body={"truncate": True})
    assert isinstance(info.value.body, dict) and info.value.body["param"] == "truncate"


@pytest.mark.parametrize(("fields", "param"), [
    ({"input": [[1, 2, 3]]}, "input"),
    ({"input": [1, 2, 3]}, "input"),
    ({"input": ""}, "input"),
    ({"input": []}, "input"),
    ({"dimensions": 64}, "dimensions"),
    ({"encoding_format": "int8"}, "encoding_format"),
])
def test_embedding_refusals_are_400_naming_the_param(
    sdk: openai.OpenAI, fields: dict[str, object], param: str
) -> None:
    body: dict[str, object] = {"model": MODEL, "input": "Hi", "encoding_format": "float",
                               **fields}
    with pytest.raises(openai.BadRequestError) as info:
        sdk.embeddings.create(**body)  # type: ignore[arg-type]
    error = info.value.body
    assert isinstance(error, dict) and error["param"] == param


def test_overflow_and_unknown_model(sdk: openai.OpenAI) -> None:
    with pytest.raises(openai.BadRequestError, match="maximum context length is 2048"):
        sdk.completions.create(model=MODEL, prompt="Hi", max_tokens=4000)
    with pytest.raises(openai.BadRequestError, match="maximum context length is 2048") as info:
        sdk.embeddings.create(model=MODEL, input=["short", "word " * 3000],
                              encoding_format="float")
    assert isinstance(info.value.body, dict)
    assert info.value.body["code"] == "context_length_exceeded"
    with pytest.raises(openai.NotFoundError):
        sdk.embeddings.create(model="gpt-9", input="Hi")
    with pytest.raises(openai.NotFoundError):
        sdk.completions.create(model="gpt-9", prompt="Hi")


def test_routes_take_the_keys_chat_takes_and_are_documented(chatq: Chatq) -> None:
    chat = {"messages": [{"role": "user", "content": "Hi"}], "max_tokens": 1}
    with chatq.client(key="wrong") as c:
        expected = c.post("/v1/chat/completions", json=chat).status_code
        for path, body in (("/v1/completions", {"prompt": "Hi", "max_tokens": 1}),
                           ("/v1/embeddings", {"input": "Hi"})):
            assert c.post(path, json=body).status_code == expected
    with chatq.client(key=None) as c:
        expected = c.post("/v1/chat/completions", json=chat).status_code
        assert c.post("/v1/embeddings", json={"input": "Hi"}).status_code == expected
    with chatq.client() as c:
        paths = c.get("/openapi.json").json()["paths"]
    assert "/v1/completions" in paths and "/v1/embeddings" in paths
