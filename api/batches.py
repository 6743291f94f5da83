"""OpenAI's Batch API on chatq's jobs: the batch and its lines in MongoDB, validation,
and the batch object as OpenAI's SDK parses it. The feeder that runs the lines is
:mod:`api.batch_feeder`.

A batch moves ``validating -> in_progress -> finalizing -> completed``, or to
``failed`` (validation), ``cancelling -> cancelled`` or ``expired``. What must hold:

- **All or nothing at validation.** Every line is checked as its route would check
  it (the body model, the route's refusals, :func:`api.admission.check`: the same
  400 wording), plus the line's own shape (JSON, ``custom_id`` unique, ``method``
  ``POST``, ``url`` the batch's endpoint). One bad line fails the batch, naming each
  bad line (``errors``); nothing is queued.
- **State in MongoDB, not in a process.** The batch (collection ``batches``) and one
  document per line (``batch_lines``: ``pending -> queued -> done``) hold all
  there is, so any API process can take a batch over after a restart.
- **Every change is a conditional update** on the state it leaves, so two
  processes never both make it: a line is written ``done`` once (its result and
  its count), a batch ends once (its webhook and its counter).
"""

from __future__ import annotations

import hashlib
import json
import secrets
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field, replace
from typing import Any

from fastapi.exceptions import RequestValidationError
from pydantic import BaseModel, ValidationError
from pymongo import ASCENDING, AsyncMongoClient, ReturnDocument
from pymongo.asynchronous.collection import AsyncCollection

from api import admission
from api.admission import Work
from api.errors import openai_body, validation_error
from api.openai_wire import BatchRoute
from api.services import Services
from shared.errors import ChatqError, InvalidRequest, NotFound
from shared.schemas import Priority

ACTIVE = ("validating", "in_progress", "finalizing", "cancelling")
FINAL = ("completed", "failed", "expired", "cancelled")
MAX_ERRORS = 1000  # validation errors kept on the batch (the first ones, by line)
PROGRESS_EVERY = 200  # lines validated between two renewals of the feeder's lease


def new_batch_id() -> str:
    return "batch_" + secrets.token_urlsafe(16)


def _ts(value: float | None) -> int | None:
    return int(value) if value else None


def batch_object(doc: dict[str, Any]) -> dict[str, Any]:
    """The batch as OpenAI's ``batch`` object."""
    errors = doc.get("errors")
    return {
        "id": doc["_id"], "object": "batch", "endpoint": doc["endpoint"],
        "errors": {"object": "list", "data": errors} if errors else None,
        "input_file_id": doc["input_file_id"],
        "completion_window": doc["completion_window"], "status": doc["status"],
        "output_file_id": doc.get("output_file_id"), "error_file_id": doc.get("error_file_id"),
        "created_at": int(doc["created_at"]),
        **{f"{s}_at": _ts(doc.get(f"{s}_at")) for s in (
            "in_progress", "expires", "finalizing", "completed", "failed", "expired",
            "cancelling", "cancelled")},
        "request_counts": dict(doc.get("counts") or {"total": 0, "completed": 0, "failed": 0}),
        "metadata": doc.get("metadata"), "model": doc.get("model"),
    }


@dataclass(frozen=True)
class LineError:
    """A validation error of one line (OpenAI's ``BatchError``)."""

    line: int | None
    code: str
    message: str
    param: str | None = None

    def dump(self) -> dict[str, Any]:
        return {"code": self.code, "line": self.line, "message": self.message,
                "param": self.param}


@dataclass(frozen=True)
class Line:
    """One valid line: its number (from 1), ``custom_id`` and request body."""

    n: int
    custom_id: str
    body: dict[str, Any]


def parse_line(  # noqa: PLR0911 (one answer per thing a line can get wrong)
    raw: bytes, n: int, url: str,
) -> tuple[str, dict[str, Any]] | LineError:
    """The line's ``custom_id`` and body, or what is wrong with its envelope."""
    try:
        item = json.loads(raw)
    except (ValueError, UnicodeDecodeError):
        return LineError(n, "invalid_json_line", f"line {n} is not valid JSON")
    if not isinstance(item, dict):
        return LineError(n, "invalid_json_line", f"line {n} is not a JSON object")
    unknown = sorted(set(item) - {"custom_id", "method", "url", "body"})
    custom_id, body = item.get("custom_id"), item.get("body")
    if unknown:
        return LineError(n, "invalid_request", f"line {n}: unrecognized field "
                         f"{unknown[0]!r}", unknown[0])
    if not isinstance(custom_id, str) or not custom_id:
        return LineError(n, "invalid_request", f"line {n}: custom_id must be a non-empty "
                         "string", "custom_id")
    if item.get("method") != "POST":
        return LineError(n, "invalid_request", f"line {n}: method must be POST", "method")
    if item.get("url") != url:
        return LineError(n, "invalid_url", f"line {n}: url {item.get('url')!r} is not the "
                         f"batch's endpoint {url!r}", "url")
    if not isinstance(body, dict):
        return LineError(n, "invalid_request", f"line {n}: body must be a JSON object",
                         "body")
    return custom_id, body


def line_work(route: BatchRoute, body: dict[str, Any], batch_id: str, n: int) -> Work:
    """The line's work as its route makes it, at ``batch`` priority, with an idempotency
    key of its own (a line fed twice, across a crash, makes one job)."""
    try:
        request: BaseModel = route.request.model_validate(body)
    except ValidationError as exc:
        raise validation_error(RequestValidationError(exc.errors())) from exc
    if getattr(request, "stream", False):
        raise InvalidRequest.of_field("stream", "a batch line cannot stream: its answer is "
                                                "written to the output file")
    work: Work = request.to_work()  # type: ignore[attr-defined]
    canonical = json.dumps(body, sort_keys=True, separators=(",", ":"))
    return replace(work, priority=Priority.batch, idempotency_key=f"{batch_id}#{n}",
                   body_hash=hashlib.sha256(canonical.encode()).hexdigest())


def error_of(exc: ChatqError, n: int) -> LineError:
    """A refusal of the line's body as a line error (the route's message and param)."""
    param = openai_body(exc)["error"]["param"]
    return LineError(n, exc.code, f"line {n}: {exc.message}", f"body.{param}" if param
                     else "body")


@dataclass
class Validation:
    """The outcome of reading an input file: its valid lines (handed on in chunks as they
    are read), its errors, and the model of its first line."""

    lines: int = 0
    errors: list[LineError] = field(default_factory=list)
    model: str | None = None
    seen: dict[str, int] = field(default_factory=dict, repr=False)  # custom_id -> line


KEEP_EVERY = 1000  # valid lines handed to ``keep`` at once

Keep = Callable[[list[Line]], Awaitable[None]]


async def validate(
    svc: Services, route: BatchRoute, batch_id: str, raw_lines: AsyncIterator[bytes], *,
    keep: Keep, progress: Callable[[], Awaitable[None]] | None = None,
) -> Validation:
    """Every line checked (see the module's docstring), read as it comes: the valid ones
    go to ``keep()`` in chunks (the feeder stores them ``pending``), ``progress()`` is
    called every :data:`PROGRESS_EVERY` lines (the feeder renews its lease)."""
    out, held = Validation(), []
    limit = svc.settings.batches.max_lines
    n = requests = 0
    async for raw in raw_lines:
        n += 1
        if not raw.strip():
            continue  # a blank line (the file's last, say) is no request
        requests += 1
        if requests > limit:
            out.errors.append(LineError(n, "too_many_requests",
                                        f"the input file has over {limit} requests"))
            break
        if progress is not None and n % PROGRESS_EVERY == 0:
            await progress()
        line = await _check_line(svc, route, batch_id, raw, n, out)
        if line is not None:
            held.append(line)
        if len(held) >= KEEP_EVERY:
            await keep(held)
            held = []
    if requests == 0:
        out.errors.append(LineError(None, "empty_file", "the input file has no requests"))
    if held:
        await keep(held)
    return out


async def _check_line(  # noqa: PLR0917 (one line and where its verdict goes)
    svc: Services, route: BatchRoute, batch_id: str, raw: bytes, n: int, out: Validation,
) -> Line | None:
    """The line if it is valid; else None, its error added to ``out``."""
    parsed = parse_line(raw, n, route.url)
    if isinstance(parsed, LineError):
        out.errors.append(parsed)
        return None
    custom_id, body = parsed
    if custom_id in out.seen:
        out.errors.append(LineError(n, "duplicate_custom_id", f"line {n}: custom_id "
                                    f"{custom_id!r} is also on line {out.seen[custom_id]}",
                                    "custom_id"))
        return None
    out.seen[custom_id] = n
    try:
        spec = await admission.check(svc, line_work(route, body, batch_id, n))
    except ChatqError as exc:
        out.errors.append(error_of(exc, n))
        return None
    out.model = out.model or spec.name
    out.lines += 1
    return Line(n, custom_id, body)


class BatchStore:
    """The ``batches`` and ``batch_lines`` collections."""

    def __init__(self, mongo: AsyncMongoClient[Any], db: str) -> None:
        self.batches: AsyncCollection[dict[str, Any]] = mongo[db]["batches"]
        self.lines: AsyncCollection[dict[str, Any]] = mongo[db]["batch_lines"]

    async def ensure_indexes(self) -> None:
        await self.batches.create_index([("tenant", ASCENDING), ("created_at", ASCENDING)])
        await self.batches.create_index([("status", ASCENDING), ("lease_until", ASCENDING)])
        await self.lines.create_index([("batch", ASCENDING), ("state", ASCENDING),
                                       ("n", ASCENDING)])

    async def get(self, tenant: str, batch_id: str) -> dict[str, Any]:
        doc = await self.batches.find_one({"_id": batch_id, "tenant": tenant})
        if doc is None:
            raise NotFound(f"no such batch: {batch_id}", details={"batch_id": batch_id})
        return doc

    async def page(self, tenant: str, after: str | None, limit: int
                   ) -> tuple[list[dict[str, Any]], bool]:
        """Newest first, after the batch ``after``."""
        query: dict[str, Any] = {"tenant": tenant}
        if after is not None:
            mark = await self.get(tenant, after)
            query["created_at"] = {"$lt": mark["created_at"]}
        docs = await self.batches.find(query).sort([("created_at", -1)]).limit(
            limit + 1).to_list()
        return docs[:limit], len(docs) > limit

    async def active(self, tenant: str | None) -> dict[str, int]:
        """Batches not yet ended, by status (``tenant``'s, or every tenant's)."""
        counts = {}
        for status in ACTIVE:
            query: dict[str, Any] = {"status": status}
            if tenant is not None:
                query["tenant"] = tenant
            counts[status] = await self.batches.count_documents(query)
        return counts

    async def move(self, batch_id: str, frm: tuple[str, ...], to: str,
                   **fields: Any) -> dict[str, Any] | None:
        """The batch moved from one of ``frm`` to ``to`` (its ``{to}_at`` now), or None
        when it was not in one of them (another process moved it first)."""
        return await self.batches.find_one_and_update(
            {"_id": batch_id, "status": {"$in": list(frm)}},
            {"$set": {"status": to, f"{to}_at": time.time(), **fields}},
            return_document=ReturnDocument.AFTER)

    async def claim(self, owner: str, lease_s: float, before: float) -> dict[str, Any] | None:
        """An active batch no process holds (its lease lapsed), leased to ``owner``;
        the one fed longest ago first."""
        now = time.time()
        return await self.batches.find_one_and_update(
            {"status": {"$in": list(ACTIVE)}, "lease_until": {"$lt": now},
             "fed_at": {"$lt": before}},
            {"$set": {"lease_until": now + lease_s, "lease_owner": owner}},
            sort=[("fed_at", ASCENDING)], return_document=ReturnDocument.AFTER)

    async def renew(self, batch_id: str, owner: str, lease_s: float) -> bool:
        """Hold the lease longer; False when ``owner`` no longer holds it."""
        kept = await self.batches.update_one({"_id": batch_id, "lease_owner": owner},
                                             {"$set": {"lease_until": time.time() + lease_s}})
        return kept.matched_count == 1

    async def release(self, batch_id: str, owner: str) -> None:
        await self.batches.update_one({"_id": batch_id, "lease_owner": owner},
                                      {"$set": {"lease_until": 0, "fed_at": time.time()}})

    async def drop_lines(self, batch_id: str) -> None:
        """Remove the batch's lines (an interrupted or failed validation's)."""
        await self.lines.delete_many({"batch": batch_id})

    async def put_lines(self, batch_id: str, lines: list[Line]) -> None:
        """Valid lines of the batch, ``pending`` (not fed while it is ``validating``)."""
        await self.lines.insert_many([
            {"_id": f"{batch_id}#{line.n}", "batch": batch_id, "n": line.n,
             "custom_id": line.custom_id, "body": line.body, "state": "pending"}
            for line in lines])

    async def of_state(self, batch_id: str, state: str, limit: int = 0
                       ) -> list[dict[str, Any]]:
        cursor = self.lines.find({"batch": batch_id, "state": state}).sort([("n", 1)])
        return await (cursor.limit(limit) if limit else cursor).to_list()

    async def results(self, batch_id: str, *, completed: bool, chunk_bytes: int = 1 << 20
                      ) -> AsyncIterator[bytes]:
        """The results of the done lines, in line order, as JSONL: the completed ones (the
        output file) or the others (the error file); in chunks of about ``chunk_bytes``."""
        outcome: Any = "completed" if completed else {"$ne": "completed"}
        cursor = self.lines.find({"batch": batch_id, "state": "done", "outcome": outcome},
                                 {"result": 1}).sort([("n", 1)])
        buf = bytearray()
        async for line in cursor:
            buf += json.dumps(line["result"], separators=(",", ":")).encode() + b"\n"
            if len(buf) >= chunk_bytes:
                yield bytes(buf)
                buf.clear()
        if buf:
            yield bytes(buf)

    async def count(self, batch_id: str, state: str) -> int:
        return await self.lines.count_documents({"batch": batch_id, "state": state})

    async def queued(self, line_id: str, job_id: str) -> bool:
        done = await self.lines.update_one({"_id": line_id, "state": "pending"},
                                           {"$set": {"state": "queued", "job_id": job_id}})
        return done.modified_count == 1

    async def done(self, batch_id: str, line_id: str, frm: str, result: dict[str, Any],
                   outcome: str) -> bool:
        """The line's result, written once (and counted once on its batch)."""
        written = await self.lines.update_one(
            {"_id": line_id, "state": frm},
            {"$set": {"state": "done", "result": result, "outcome": outcome}})
        if written.modified_count != 1:
            return False
        counter = "counts.completed" if outcome == "completed" else "counts.failed"
        await self.batches.update_one({"_id": batch_id}, {"$inc": {counter: 1}})
        return True
