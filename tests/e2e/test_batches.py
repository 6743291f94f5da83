"""OpenAI's Batch API (``/v1/files``, ``/v1/batches``) with the official ``openai`` SDK:
files in and out, validation by line, results equal to the routes' own answers,
cancel, expiry, tenants, webhooks, interactive priority, and a worker killed mid-batch."""

from __future__ import annotations

import base64
import hashlib
import hmac
import io
import json
import time
from collections.abc import Iterator
from typing import Any

import httpx
import openai
import pytest

from shared.settings import DEV_API_KEY
from tests.conftest import Chatq
from tests.helpers import Receiver, hi, submit, wait_done

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
