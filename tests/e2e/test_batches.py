"""OpenAI's Batch API (``/v1/files``, ``/v1/batches``) with the official ``openai`` SDK:
files in and out, validation by line, results equal to the routes' own answers,
cancel, expiry, tenants, webhooks, interactive priority, and a worker killed mid-batch."""

from __future__ import annotations

import io
import json
import time
from collections.abc import Callable, Iterator
from datetime import datetime
from typing import Any

import httpx
import openai
import pymongo
import pytest

from ops.devstack import free_port
from shared.settings import DEV_API_KEY
from shared.webhooks import sign
from tests.conftest import Chatq, new_stack, start_chatq
from tests.helpers import LONG, Receiver, hi, slots, submit, wait_done, wait_idle

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
    assert created.expires_at == created.created_at + 30 * 86400  # OpenAI's default
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


def test_a_file_expires_after_what_it_asks(sdk: openai.OpenAI) -> None:
    created = sdk.files.create(file=("x.jsonl", io.BytesIO(b"{}\n")), purpose="batch",
                               expires_after={"anchor": "created_at", "seconds": 3600})
    assert created.expires_at == created.created_at + 3600
    with pytest.raises(openai.BadRequestError) as caught:
        sdk.files.create(file=("x.jsonl", io.BytesIO(b"{}\n")), purpose="batch",
                         expires_after={"anchor": "created_at", "seconds": 10})
    assert caught.value.param == "expires_after.seconds"


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


# --- cancel, webhooks, metrics ----------------------------------------------------


def test_cancel_mid_batch_stops_its_jobs_and_reports_what_it_finished(
        sdk: openai.OpenAI, chatq: Chatq, client: httpx.Client) -> None:
    lines = [chat_line(f"c{i}", LONG, max_tokens=48) for i in range(30)]
    with Receiver() as hook:
        batch = run(sdk, lines, extra_body={"webhook": hook.url})
        wait_batch(sdk, batch.id, ("in_progress",),
                   lambda b: b.request_counts.completed >= 1)
        cancelling = sdk.batches.cancel(batch.id)
        assert cancelling.status in ("cancelling", "cancelled") and cancelling.cancelling_at
        done = wait_batch(sdk, batch.id)
        [delivery] = hook.wait(1)
    assert done.status == "cancelled" and done.cancelled_at
    counts = done.request_counts
    assert counts is not None and counts.total == 30
    out, err = results(sdk, done.output_file_id), results(sdk, done.error_file_id)
    assert counts.completed == len(out) >= 1 and counts.failed == len(err) >= 1
    assert not set(out) & set(err) and set(out) | set(err) == {ln["custom_id"] for ln in lines}
    assert all(r["response"]["status_code"] == 200 for r in out.values())
    assert {r["error"]["code"] for r in err.values()} == {"batch_cancelled"}
    wait_idle(client)  # no job of the batch is left queued or running
    event = json.loads(delivery.body)
    assert (event["type"], event["data"]["id"], event["object"]) == (
        "batch.cancelled", batch.id, "event")
    assert sdk.batches.cancel(batch.id).status == "cancelled"  # cancelling again: as it is
    metrics = client.get("/metrics").text
    assert 'chatq_batches_total{status="cancelled"}' in metrics
    assert 'chatq_batch_lines_total{outcome="cancelled"}' in metrics


def test_the_end_of_a_batch_is_a_signed_webhook_and_counted(
        sdk: openai.OpenAI, chatq: Chatq, client: httpx.Client) -> None:
    with Receiver() as hook:
        batch = run(sdk, [chat_line("w", "Hi", 2)], extra_body={"webhook": hook.url})
        assert wait_batch(sdk, batch.id).status == "completed"
        [delivery] = hook.wait(1)
    event = json.loads(delivery.body)
    assert (event["type"], event["data"]["id"]) == ("batch.completed", batch.id)
    secret = chatq.redis().get("chatq:webhook-secret:dev")
    headers = delivery.headers
    assert headers["webhook-signature"] == sign(
        str(secret), headers["webhook-id"], int(headers["webhook-timestamp"]), delivery.body)
    with pytest.raises(openai.ConflictError):
        sdk.batches.cancel(batch.id)  # it has ended
    metrics = client.get("/metrics").text
    assert 'chatq_batches_total{status="completed"}' in metrics
    assert 'chatq_batch_lines_total{outcome="completed"}' in metrics


def test_a_batch_names_a_webhook_chatq_may_call(sdk: openai.OpenAI) -> None:
    file_id = upload(sdk, jsonl([chat_line("a", "Hi")]))
    for url in ("not a url", "https://user:secret@example.com/hook"):  # as a job's webhook
        with pytest.raises(openai.BadRequestError) as caught:
            sdk.batches.create(input_file_id=file_id, endpoint="/v1/chat/completions",
                               completion_window="24h", extra_body={"webhook": url})
        assert caught.value.param == "webhook"


def test_a_batch_that_fails_validation_is_a_batch_failed_webhook_and_counted(
        sdk: openai.OpenAI, client: httpx.Client) -> None:
    with Receiver() as hook:
        batch = run(sdk, [chat_line("d", "Hi"), chat_line("d", "Hi")],  # a duplicate id
                    extra_body={"webhook": hook.url})
        assert wait_batch(sdk, batch.id).status == "failed"
        [delivery] = hook.wait(1)
    event = json.loads(delivery.body)
    assert (event["type"], event["data"]["id"]) == ("batch.failed", batch.id)
    assert 'chatq_batches_total{status="failed"}' in client.get("/metrics").text


def test_a_batch_output_file_answers_404_once_past_its_expiry(
        sdk: openai.OpenAI, chatq: Chatq) -> None:
    batch = run(sdk, [chat_line("x", "Hi", 2)],
                output_expires_after={"anchor": "created_at", "seconds": 3600})
    done = wait_batch(sdk, batch.id)
    assert done.status == "completed" and done.output_file_id and done.completed_at
    output = sdk.files.retrieve(done.output_file_id)
    assert output.expires_at is not None
    assert done.completed_at - 5 <= output.expires_at - 3600 <= done.completed_at + 5
    # The hour passes (its deadline moved into the past, as the clock would).
    with pymongo.MongoClient(chatq.stack.env["CHATQ_MONGO_URL"]) as store:
        files = store[chatq.stack.env.get("CHATQ_MONGO_DB", "chatq")]["files.files"]
        moved = files.update_one({"_id": done.output_file_id},
                                 {"$set": {"metadata.expires_at": time.time() - 1}})
        assert moved.modified_count == 1
    with pytest.raises(openai.NotFoundError):
        sdk.files.retrieve(done.output_file_id)
    with pytest.raises(openai.NotFoundError):
        sdk.files.content(done.output_file_id)
    assert done.output_file_id not in [f.id for f in sdk.files.list()]


def test_a_batch_interrupted_while_finalizing_is_finished_from_its_lines(
        sdk: openai.OpenAI, chatq: Chatq) -> None:
    lines = [chat_line(f"f{i}", PROMPTS[i], 2) for i in range(3)]
    done = wait_batch(sdk, run(sdk, lines).id)
    assert done.status == "completed" and done.output_file_id
    before = results(sdk, done.output_file_id)
    # What MongoDB holds when a process dies in `finalizing` halfway through the output
    # file: the batch not ended, the file's first chunk written, the file not closed.
    with pymongo.MongoClient(chatq.stack.env["CHATQ_MONGO_URL"]) as store:
        db = store[chatq.stack.env.get("CHATQ_MONGO_DB", "chatq")]
        db["files.files"].delete_one({"_id": done.output_file_id})
        db["files.chunks"].delete_many({"files_id": done.output_file_id})
        db["files.chunks"].insert_one({"files_id": done.output_file_id, "n": 0,
                                       "data": b'{"custom_id": "f0", "respo'})
        db["batches"].update_one({"_id": done.id}, {
            "$set": {"status": "finalizing", "output_file_id": None, "completed_at": None,
                     "lease_until": 0, "fed_at": 0}})
    again = wait_batch(sdk, done.id)
    assert again.status == "completed" and again.output_file_id == done.output_file_id
    assert results(sdk, again.output_file_id) == before  # every line once, as written


def _waiting(client: httpx.Client, queue: str = "cpu") -> int:
    [q] = [q for q in client.get("/v1/queues").json()["data"] if q["queue"] == queue]
    return int(q["depth"])


def test_a_batch_leaves_interactive_callers_room_below_the_queue_limit(
        make_stack: Callable[..., Chatq]) -> None:
    stack = make_stack(env={"CHATQ_API__MAX_QUEUE_DEPTH": "4"})
    sdk = openai.OpenAI(base_url=f"{stack.base_url}/v1", api_key=DEV_API_KEY, max_retries=0)
    with stack.client() as client:
        batch = run(sdk, [chat_line(f"q{i}", LONG, max_tokens=48) for i in range(40)])
        # the batch at its share of the queue (half of 4 waiting), every slot busy
        wait_batch(sdk, batch.id, ("in_progress",), lambda _: _waiting(client) >= 2)
        assert _waiting(client) <= 2
        jobs = [submit(client, hi(max_tokens=2)) for _ in range(2)]  # 202, never 429
        assert sdk.batches.cancel(batch.id).status in ("cancelling", "cancelled")
        assert wait_batch(sdk, batch.id).status == "cancelled"
        assert all(wait_done(client, j["id"], timeout=WAIT_S)["status"] == "succeeded"
                   for j in jobs)


# --- interactive callers keep their priority ---------------------------------------


def _job(client: httpx.Client, job_id: str) -> dict[str, Any]:
    job: dict[str, Any] = client.get(f"/v1/jobs/{job_id}").json()
    return job


def _at(job: dict[str, Any], field: str) -> datetime:
    return datetime.fromisoformat(job[field])


def test_an_interactive_request_does_not_wait_behind_a_200_line_batch(
        sdk: openai.OpenAI, client: httpx.Client) -> None:
    wait_idle(client)
    batch = run(sdk, [chat_line(f"p{i}", PROMPTS[i % 10], max_tokens=2) for i in range(200)])

    def backlog(b: Any) -> bool:  # lines done, and more of them waiting in the queue
        depth = [q for q in client.get("/v1/queues").json()["data"] if q["queue"] == "cpu"]
        return bool(b.request_counts.completed >= 8 and depth and depth[0]["depth"] > 0)

    wait_batch(sdk, batch.id, ("in_progress",), backlog)
    interactive = submit(client, hi("Say hi.", max_tokens=2))
    assert client.get("/v1/queues").json()["batches"]["in_progress"] >= 1
    assert interactive["position"] == 0  # ahead of every batch line waiting
    interactive = wait_done(client, interactive["id"], timeout=WAIT_S)
    # Enough of the batch's later lines done to compare with (then the rest is cancelled):
    # every line that was waiting or prefetched when the interactive job came.
    later = sdk.batches.retrieve(batch.id).request_counts.completed + 16 + 2 * slots(client)
    wait_batch(sdk, batch.id, ("in_progress", *ENDED),
               lambda b: b.status != "in_progress" or b.request_counts.completed >= later,
               timeout=WAIT_S * 3)
    sdk.batches.cancel(batch.id)
    done = wait_batch(sdk, batch.id)
    assert done.status == "cancelled" and done.request_counts.total == 200
    jobs = [_job(client, r["response"]["request_id"])
            for r in results(sdk, done.output_file_id).values()]
    assert all(j["priority"] == "batch" for j in jobs)
    submitted, started = _at(interactive, "created_at"), _at(interactive, "started_at")
    # Only the lines the worker had already taken (its prefetch, one per slot) may start
    # between the interactive job's submit and its start; the waiting ones start after.
    between = [j for j in jobs if submitted < _at(j, "started_at") < started]
    assert len(between) <= 2 * slots(client)
    overtaken = [j for j in jobs if _at(j, "created_at") < submitted < started
                 < _at(j, "started_at")]
    assert overtaken  # batch lines that were waiting when it came started after it


# --- tenants and expiry (a stack of their own: keys, a short window, no GPU worker) -

KEYS = "key-alice=alice,key-bob=bob"


@pytest.fixture(scope="module")
def keyed(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Chatq]:
    stack = new_stack(tmp_path_factory.mktemp("batches"), "keyed")
    stack.env.update({"CHATQ_API__KEYS": KEYS, "CHATQ_BATCHES__WINDOW_S": "2",
                      "CHATQ_WEBHOOKS__ALLOW_HOSTS": '["127.0.0.1"]'})  # the receiver
    try:
        yield start_chatq(stack, with_worker=False, with_webhooks=True)
    finally:
        stack.stop()


def _as(stack: Chatq, key: str) -> openai.OpenAI:
    return openai.OpenAI(base_url=f"{stack.base_url}/v1", api_key=key, max_retries=0)


def test_another_tenant_cannot_see_the_file_or_the_batch(keyed: Chatq) -> None:
    alice, bob = _as(keyed, "key-alice"), _as(keyed, "key-bob")
    batch = run(alice, [chat_line("a", "Hi")])
    file_id = batch.input_file_id
    for call in (lambda: bob.files.retrieve(file_id), lambda: bob.files.content(file_id),
                 lambda: bob.files.delete(file_id), lambda: bob.batches.retrieve(batch.id),
                 lambda: bob.batches.cancel(batch.id),
                 lambda: bob.batches.create(input_file_id=file_id, completion_window="24h",
                                            endpoint="/v1/chat/completions")):
        with pytest.raises(openai.NotFoundError):
            call()
    assert file_id not in [f.id for f in bob.files.list()]
    assert batch.id not in [b.id for b in bob.batches.list()]
    assert alice.files.retrieve(file_id).id == file_id
    assert alice.batches.retrieve(batch.id).id == batch.id


def test_lines_not_run_by_the_windows_end_are_batch_expired(keyed: Chatq) -> None:
    alice = _as(keyed, "key-alice")
    lines = [chat_line(f"e{i}", "Hi") for i in range(3)]
    with Receiver() as hook:
        # no worker: nothing can run before the 2 s window ends
        batch = run(alice, lines, extra_body={"webhook": hook.url})
        done = wait_batch(alice, batch.id)
        [delivery] = hook.wait(1)
    event = json.loads(delivery.body)
    assert (event["type"], event["data"]["id"]) == ("batch.expired", batch.id)
    assert done.status == "expired" and done.expired_at and done.output_file_id is None
    assert done.request_counts is not None
    assert (done.request_counts.total, done.request_counts.failed) == (3, 3)
    err = results(alice, done.error_file_id)
    assert set(err) == {"e0", "e1", "e2"}
    assert all(r["error"]["code"] == "batch_expired" and r["response"] is None
               for r in err.values())
    with keyed.client(key=None) as anyone:  # development without admin keys: open
        metrics = anyone.get("/metrics").text
    assert 'chatq_batches_total{status="expired"}' in metrics
    assert 'chatq_batch_lines_total{outcome="expired"}' in metrics


# --- faults -----------------------------------------------------------------------


def test_a_worker_killed_and_an_api_restarted_mid_batch_lose_and_double_no_line(
        make_stack: Callable[..., Chatq]) -> None:
    stack = make_stack()
    second = stack.stack.start_api(free_port())  # two API processes: two feeders
    sdk = openai.OpenAI(base_url=f"{stack.base_url}/v1", api_key=DEV_API_KEY, max_retries=0)
    lines = [chat_line(f"k{i}", PROMPTS[i % 10], max_tokens=24) for i in range(24)]
    batch = run(sdk, lines)
    wait_batch(sdk, batch.id, ("in_progress",), lambda b: b.request_counts.completed >= 2)
    assert stack.worker is not None
    stack.worker.kill()  # SIGKILL mid-batch: its running lines go back to the queue
    stack.api.kill()
    stack.worker = stack.start_worker(name="worker-cpu-2")
    stack.api = stack.stack.start_api(int(stack.base_url.rsplit(":", 1)[1]))
    done = wait_batch(sdk, batch.id)
    assert done.status == "completed", done
    out = results(sdk, done.output_file_id)
    assert set(out) == {ln["custom_id"] for ln in lines} and done.error_file_id is None
    assert done.request_counts is not None and done.request_counts.completed == 24
    assert len({r["response"]["request_id"] for r in out.values()}) == 24  # one job a line
    second.stop()


def test_a_redis_restart_mid_batch_loses_and_doubles_no_line(
        make_stack: Callable[..., Chatq]) -> None:
    stack = make_stack(aof=True)  # append-only file, as in production
    sdk = openai.OpenAI(base_url=f"{stack.base_url}/v1", api_key=DEV_API_KEY, max_retries=0)
    lines = [chat_line(f"r{i}", PROMPTS[i % 10], max_tokens=16) for i in range(20)]
    batch = run(sdk, lines)
    wait_batch(sdk, batch.id, ("in_progress",), lambda b: b.request_counts.completed >= 2)
    stack.restart_redis()
    done = wait_batch(sdk, batch.id)
    assert done.status == "completed", done
    out = results(sdk, done.output_file_id)
    assert set(out) == {ln["custom_id"] for ln in lines} and done.error_file_id is None
    assert len({r["response"]["request_id"] for r in out.values()}) == 20  # one job a line
