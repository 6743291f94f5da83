"""OpenAI's Batch API (``/v1/files``, ``/v1/batches``) with the official ``openai`` SDK:
files in and out, validation by line, results equal to the routes' own answers,
cancel, expiry, tenants, webhooks, interactive priority, and a worker killed mid-batch."""

from __future__ import annotations

import io
import json
import time
from typing import Any

import httpx
import openai
import pytest

from shared.settings import DEV_API_KEY
from tests.conftest import Chatq

MODEL = "smollm2-135m"
WAIT_S = 300  # a deadline for a stuck batch, not a speed
ENDED = ("completed", "failed", "expired", "cancelled")


@pytest.fixture
def sdk(chatq: Chatq) -> openai.OpenAI:
    return openai.OpenAI(base_url=f"{chatq.base_url}/v1", api_key=DEV_API_KEY, max_retries=0)


def jsonl(lines: list[dict[str, Any]]) -> bytes:
    return b"".join(json.dumps(line).encode() + b"\n" for line in lines)


def line(custom_id: str, url: str, body: dict[str, Any]) -> dict[str, Any]:
    return {"custom_id": custom_id, "method": "POST", "url": url, "body": body}


def chat_line(custom_id: str, text: str, max_tokens: int = 6) -> dict[str, Any]:
    return line(custom_id, "/v1/chat/completions", {
        "model": MODEL, "messages": [{"role": "user", "content": text}],
        "max_tokens": max_tokens, "temperature": 0})


def upload(sdk: openai.OpenAI, data: bytes, name: str = "requests.jsonl") -> str:
    return sdk.files.create(file=(name, io.BytesIO(data)), purpose="batch").id


def run(sdk: openai.OpenAI, lines: list[dict[str, Any]], **kwargs: Any) -> Any:
    """Upload the lines and create a batch of them (its endpoint: the first line's url)."""
    file_id = upload(sdk, jsonl(lines))
    return sdk.batches.create(input_file_id=file_id, endpoint=lines[0]["url"],
                              completion_window="24h", **kwargs)


def wait_batch(sdk: openai.OpenAI, batch_id: str, until: tuple[str, ...] = ENDED,
               check: Any = None, timeout: float = WAIT_S) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        batch = sdk.batches.retrieve(batch_id)
        if batch.status in until and (check is None or check(batch)):
            return batch
        assert time.monotonic() < deadline, f"batch not {until} after {timeout} s: {batch}"
        time.sleep(0.1)


def results(sdk: openai.OpenAI, file_id: str | None) -> dict[str, dict[str, Any]]:
    """A results file's lines by custom_id (each custom_id once)."""
    if file_id is None:
        return {}
    rows = [json.loads(r) for r in sdk.files.content(file_id).text.splitlines()]
    by_id = {r["custom_id"]: r for r in rows}
    assert len(by_id) == len(rows), "a custom_id written twice"
    return by_id


# --- files ------------------------------------------------------------------------


def test_a_file_round_trips(sdk: openai.OpenAI) -> None:
    data = jsonl([chat_line("a", "Hi")])
    created = sdk.files.create(file=("mine.jsonl", io.BytesIO(data)), purpose="batch")
    assert created.object == "file" and created.id.startswith("file-")
    assert (created.bytes, created.filename, created.purpose) == (len(data), "mine.jsonl",
                                                                  "batch")
    assert created.status == "processed" and created.created_at > 0
    assert sdk.files.retrieve(created.id) == created
    assert created.id in [f.id for f in sdk.files.list(purpose="batch")]
    assert sdk.files.content(created.id).content == data
    deleted = sdk.files.delete(created.id)
    assert deleted.deleted and deleted.id == created.id
    with pytest.raises(openai.NotFoundError):
        sdk.files.retrieve(created.id)
    with pytest.raises(openai.NotFoundError):
        sdk.files.content(created.id)


def test_a_file_of_another_purpose_is_refused_naming_it(sdk: openai.OpenAI) -> None:
    with pytest.raises(openai.BadRequestError) as caught:
        sdk.files.create(file=("x.jsonl", io.BytesIO(b"{}\n")), purpose="fine-tune")
    assert caught.value.param == "purpose" and "fine-tune" in caught.value.message


def test_files_page_with_after_and_limit(sdk: openai.OpenAI) -> None:
    ids = [upload(sdk, jsonl([chat_line(str(i), "Hi")])) for i in range(3)]
    first = sdk.files.list(limit=2, order="asc", purpose="batch")
    mine = [f.id for f in sdk.files.list(order="asc", purpose="batch") if f.id in ids]
    assert mine == ids
    assert len(first.data) == 2 and first.has_more
    after = sdk.files.list(after=ids[1], order="asc", purpose="batch")
    assert ids[2] in [f.id for f in after.data] and ids[1] not in [f.id for f in after.data]


def test_an_upload_over_the_file_limit_is_refused(make_stack: Any) -> None:
    stack = make_stack(with_worker=False, env={"CHATQ_BATCHES__MAX_FILE_BYTES": "1000",
                                               "CHATQ_BATCHES__MAX_LINES": "3"})
    sdk = openai.OpenAI(base_url=f"{stack.base_url}/v1", api_key=DEV_API_KEY, max_retries=0)
    with pytest.raises(openai.APIStatusError) as caught:
        upload(sdk, b"x" * 2000)
    assert caught.value.status_code == 413
    with pytest.raises(openai.BadRequestError) as lines:
        upload(sdk, b"{}\n" * 4)
    assert lines.value.param == "file" and "3 lines" in lines.value.message
    assert sdk.files.list().data == []  # nothing kept of either


# --- a batch end to end -----------------------------------------------------------

PROMPTS = ["Name a colour.", "Say hi.", "Count to three.", "Name a fruit.", "Name a city.",
           "What is 2+2?", "Name an animal.", "Say goodbye.", "Name a planet.", "Name a tree."]


def _same_answer(kind: str, mine: dict[str, Any], routes: dict[str, Any]) -> None:
    """A batch line's body against what its route answered for the same request."""
    if kind == "embeddings":
        assert mine["object"] == "list" and mine["model"] == routes["model"]
        assert mine["usage"] == routes["usage"]
        for a, b in zip(mine["data"], routes["data"], strict=True):
            assert a["index"] == b["index"]
            assert a["embedding"] == pytest.approx(b["embedding"], abs=1e-5)
        return
    assert mine["object"] == routes["object"] and mine["model"] == routes["model"]
    assert mine["usage"] == routes["usage"]
    mc, rc = mine["choices"][0], routes["choices"][0]
    assert mc["finish_reason"] == rc["finish_reason"]
    if kind == "chat":
        assert mc["message"] == rc["message"]
    else:
        assert mc["text"] == rc["text"]


def test_forty_lines_across_chat_completions_and_embeddings_equal_their_routes(
        sdk: openai.OpenAI, chatq: Chatq) -> None:
    chat = [chat_line(f"chat-{i}", PROMPTS[i % 10] + " " * (i // 10)) for i in range(20)]
    completions = [line(f"cmp-{i}", "/v1/completions", {
        "model": MODEL, "prompt": f"Once upon a time, {PROMPTS[i]}", "max_tokens": 6,
        "temperature": 0}) for i in range(10)]
    embeddings = [line(f"emb-{i}", "/v1/embeddings", {
        "model": MODEL, "input": [PROMPTS[i], PROMPTS[9 - i]]}) for i in range(10)]
    batches = {kind: run(sdk, lines, metadata={"run": "nightly"}) for kind, lines in
               (("chat", chat), ("completions", completions), ("embeddings", embeddings))}
    assert all(b.status == "validating" and b.metadata == {"run": "nightly"}
               for b in batches.values())
    with httpx.Client(base_url=chatq.base_url, timeout=120,
                      headers={"Authorization": f"Bearer {DEV_API_KEY}"}) as http:
        for kind, lines in (("chat", chat), ("completions", completions),
                            ("embeddings", embeddings)):
            done = wait_batch(sdk, batches[kind].id)
            assert done.status == "completed", done
            assert done.request_counts is not None
            assert (done.request_counts.total, done.request_counts.completed,
                    done.request_counts.failed) == (len(lines), len(lines), 0)
            assert done.error_file_id is None and done.model == MODEL
            assert done.in_progress_at and done.finalizing_at and done.completed_at
            out = results(sdk, done.output_file_id)
            assert set(out) == {ln["custom_id"] for ln in lines}
            for ln in lines:
                row = out[ln["custom_id"]]
                assert row["error"] is None and row["id"].startswith("batch_req_")
                assert row["response"]["status_code"] == 200
                body = row["response"]["body"]
                if kind != "embeddings":
                    assert body["id"] == row["response"]["request_id"]
                alone = http.post(ln["url"], json=ln["body"])
                assert alone.status_code == 200, alone.text
                _same_answer(kind, body, alone.json())
    output = sdk.files.retrieve(str(done.output_file_id))
    assert output.purpose == "batch_output" and output.expires_at is not None


def test_bad_lines_fail_the_batch_naming_each_line(sdk: openai.OpenAI) -> None:
    lines = [
        json.dumps(chat_line("ok", "Hi")).encode(),
        b"{not json",
        json.dumps(line("url", "/v1/embeddings", {"input": "x"})).encode(),
        json.dumps(line("n", "/v1/chat/completions", {
            "messages": [{"role": "user", "content": "Hi"}], "n": 2})).encode(),
        json.dumps(chat_line("ok", "Hi again")).encode(),
        json.dumps(line("model", "/v1/chat/completions", {
            "model": "no-such-model", "messages": [{"role": "user", "content": "Hi"}]})).encode(),
        json.dumps(line("field", "/v1/chat/completions", {
            "messages": [{"role": "user", "content": "Hi"}], "bogus": 1})).encode(),
    ]
    file_id = upload(sdk, b"\n".join(lines) + b"\n")
    batch = sdk.batches.create(input_file_id=file_id, endpoint="/v1/chat/completions",
                               completion_window="24h")
    done = wait_batch(sdk, batch.id)
    assert done.status == "failed" and done.failed_at
    assert done.errors is not None and done.errors.data is not None
    by_line = {e.line: e for e in done.errors.data}
    assert sorted(by_line) == [2, 3, 4, 5, 6, 7]
    assert by_line[2].code == "invalid_json_line"
    assert by_line[3].code == "invalid_url" and by_line[3].param == "url"
    assert by_line[4].code == "unsupported_parameter" and by_line[4].param == "body.n"
    assert by_line[5].code == "duplicate_custom_id" and "line 1" in str(by_line[5].message)
    assert by_line[6].code == "model_not_found" and "no-such-model" in str(by_line[6].message)
    assert by_line[7].param == "body.bogus"
    assert done.request_counts is not None and done.request_counts.total == 0
    assert done.output_file_id is None and done.error_file_id is None  # nothing ran


def test_a_batch_request_is_checked(sdk: openai.OpenAI) -> None:
    file_id = upload(sdk, jsonl([chat_line("a", "Hi")]))
    with pytest.raises(openai.BadRequestError) as endpoint:
        sdk.batches.create(input_file_id=file_id, endpoint="/v1/moderations",
                           completion_window="24h")
    assert endpoint.value.param == "endpoint"
    with pytest.raises(openai.BadRequestError) as window:
        sdk.batches.create(input_file_id=file_id, endpoint="/v1/chat/completions",
                           completion_window="1h")  # type: ignore[arg-type]
    assert window.value.param == "completion_window"
    with pytest.raises(openai.NotFoundError):
        sdk.batches.create(input_file_id="file-nope", endpoint="/v1/chat/completions",
                           completion_window="24h")
    with pytest.raises(openai.NotFoundError):
        sdk.batches.retrieve("batch_nope")


def test_batches_list_newest_first_with_after(sdk: openai.OpenAI) -> None:
    ids = [run(sdk, [chat_line("a", "Hi", 1)]).id for _ in range(3)]
    page = sdk.batches.list(limit=2)
    assert [b.id for b in page.data] == ids[::-1][:2] and page.has_more
    rest = sdk.batches.list(after=ids[1], limit=100)
    assert rest.data[0].id == ids[0]
    for batch_id in ids:
        wait_batch(sdk, batch_id)
