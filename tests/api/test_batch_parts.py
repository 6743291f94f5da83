"""The Batch API's pure parts: the multipart reader, a line's envelope, a line's work
(the route's checks, batch priority, its own idempotency key), the batch object, the
counting of an upload, result lines, and the Prometheus counters."""

from __future__ import annotations

import json

import httpx
import pytest
from prometheus_client import CollectorRegistry, generate_latest

from api import multipart
from api.batch_feeder import refused, result_line
from api.batches import LineError, batch_object, line_work, parse_line
from api.files import Counted
from api.routers import chat, completions, embeddings
from api.telemetry import QueueCollector
from shared.errors import ChatqError, InvalidRequest, UnsupportedParameter
from shared.schemas import JobKind, Priority

# --- multipart ---------------------------------------------------------------------


def _form(content: bytes, **fields: str) -> tuple[bytes, str]:
    request = httpx.Request("POST", "http://x/v1/files", data=fields,
                            files={"file": ("in.jsonl", content)})
    return request.read(), request.headers["content-type"]


def _read(body: bytes, content_type: str, size: int) -> dict[str, tuple[str | None, bytes]]:
    reader = multipart.Reader(multipart.boundary_of(content_type))
    parts: dict[str, tuple[str | None, bytes]] = {}
    current = ""
    for i in range(0, len(body), size):
        for event in reader.feed(body[i:i + size]):
            if isinstance(event, multipart.Start):
                current = event.name
                parts[current] = (event.filename, b"")
            elif isinstance(event, multipart.Data):
                name, data = parts[current]
                parts[current] = (name, data + event.data)
    reader.close()
    return parts


@pytest.mark.parametrize("size", [1, 3, 64, 1 << 20])
def test_multipart_parts_come_whole_whatever_the_chunks(size: int) -> None:
    # Content that looks like a delimiter's start, CRLFs and dashes included.
    content = b'{"a": 1}\r\n--not-the-boundary\r\n' * 50 + b"\r\n-"
    body, kind = _form(content, purpose="batch")
    parts = _read(body, kind, size)
    assert parts["purpose"] == (None, b"batch")
    assert parts["file"] == ("in.jsonl", content)


def test_multipart_refuses_what_is_not_a_form() -> None:
    with pytest.raises(multipart.MultipartError):
        multipart.boundary_of("application/json")
    body, kind = _form(b"x")
    reader = multipart.Reader(multipart.boundary_of(kind))
    reader.feed(body[: len(body) // 2])
    with pytest.raises(multipart.MultipartError, match="before its closing boundary"):
        reader.close()
    nameless = multipart.Reader(b"b")
    with pytest.raises(multipart.MultipartError, match="name"):
        nameless.feed(b"--b\r\nContent-Disposition: attachment\r\n\r\nx\r\n--b--")


def test_an_upload_is_counted_as_it_comes() -> None:
    counted = Counted()
    for chunk in (b'{"a":1}\n{"b"', b':2}\n{"c":3}'):
        counted.add(chunk)
    assert (counted.size, counted.total_lines) == (23, 3)
    counted.add(b"\n")
    assert counted.total_lines == 3


# --- a line ------------------------------------------------------------------------

URL = "/v1/chat/completions"
BODY = {"messages": [{"role": "user", "content": "Hi"}], "max_tokens": 3}


def _raw(**fields: object) -> bytes:
    return json.dumps({"custom_id": "a", "method": "POST", "url": URL, "body": BODY,
                       **fields}).encode()


def test_a_line_envelope_is_checked_naming_what_is_wrong() -> None:
    assert parse_line(_raw(), 1, URL) == ("a", BODY)
    cases = {b"{nope": ("invalid_json_line", None), b"[1]": ("invalid_json_line", None),
             _raw(custom_id=""): ("invalid_request", "custom_id"),
             _raw(method="GET"): ("invalid_request", "method"),
             _raw(url="/v1/embeddings"): ("invalid_url", "url"),
             _raw(body=[]): ("invalid_request", "body"),
             _raw(extra=1): ("invalid_request", "extra")}
    for raw, (code, param) in cases.items():
        error = parse_line(raw, 7, URL)
        assert isinstance(error, LineError), raw
        assert (error.code, error.param, error.line) == (code, param, 7)
        assert "line 7" in error.message


def test_a_line_is_the_routes_work_at_batch_priority_with_its_own_key() -> None:
    work = line_work(chat.BATCH, BODY, "batch_x", 4)
    assert work.kind is JobKind.chat and work.priority is Priority.batch
    assert work.idempotency_key == "batch_x#4" and work.max_tokens == 3
    same = line_work(chat.BATCH, dict(reversed(BODY.items())), "batch_x", 4)
    assert same.body_hash == work.body_hash  # key order does not matter
    text = line_work(completions.BATCH, {"prompt": "Once", "max_tokens": 2}, "b", 1)
    assert text.kind is JobKind.completion and text.inputs == ["Once"]
    vectors = line_work(embeddings.BATCH, {"input": ["a", "b"]}, "b", 1)
    assert vectors.kind is JobKind.embedding and vectors.inputs == ["a", "b"]


def test_a_line_the_route_would_refuse_is_refused_the_same_way() -> None:
    with pytest.raises(UnsupportedParameter, match="n must be 1"):
        line_work(chat.BATCH, {**BODY, "n": 2}, "b", 1)
    with pytest.raises(InvalidRequest) as unknown:
        line_work(chat.BATCH, {**BODY, "bogus": True}, "b", 1)
    assert unknown.value.details[0]["field"] == "bogus"
    with pytest.raises(InvalidRequest) as stream:
        line_work(chat.BATCH, {**BODY, "stream": True}, "b", 1)
    assert stream.value.details[0]["field"] == "stream"


# --- the batch, its results, its counters --------------------------------------------


def test_the_batch_object_has_every_field_the_sdk_reads() -> None:
    doc = {"_id": "batch_1", "endpoint": URL, "input_file_id": "file-1",
           "completion_window": "24h", "status": "failed", "created_at": 10.5,
           "expires_at": 99.0, "failed_at": 11.2, "metadata": {"k": "v"},
           "errors": [LineError(2, "invalid_json_line", "line 2 is not valid JSON").dump()],
           "counts": {"total": 0, "completed": 0, "failed": 0}}
    obj = batch_object(doc)
    assert obj["object"] == "batch" and obj["created_at"] == 10 and obj["failed_at"] == 11
    assert obj["errors"] == {"object": "list", "data": [
        {"code": "invalid_json_line", "line": 2, "message": "line 2 is not valid JSON",
         "param": None}]}
    assert obj["completed_at"] is None and obj["output_file_id"] is None
    assert obj["request_counts"] == {"total": 0, "completed": 0, "failed": 0}


def test_a_refused_line_answers_as_its_route_would() -> None:
    response = refused(InvalidRequest.of_field("messages", "empty"), None)
    assert response["status_code"] == 400  # an OpenAI path answers 400, not 422
    assert response["body"]["error"]["param"] == "messages"
    failed = refused(ChatqError("boom", code="timeout", status=504), "job_1")
    assert (failed["status_code"], failed["request_id"]) == (504, "job_1")
    row = result_line({"custom_id": "c"}, error={"code": "batch_expired", "message": "m"})
    assert row["id"].startswith("batch_req_") and row["response"] is None


def test_batch_counters_in_the_exposition() -> None:
    registry = CollectorRegistry()
    registry.register(QueueCollector([], batch_stats={
        "batches:completed": "2", "lines:completed": "40", "lines:expired": "3"}))
    text = generate_latest(registry).decode()
    assert 'chatq_batches_total{status="completed"} 2.0' in text
    assert 'chatq_batch_lines_total{outcome="expired"} 3.0' in text
