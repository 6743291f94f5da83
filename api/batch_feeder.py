"""The batch feeder: runs every API process, takes batches under a lease, and moves
each one on (validates it, feeds its lines as the queue drains, writes its results,
ends it). See :mod:`api.batches` for the states.

What must hold:

- **One feeder per batch at a time, none lost to a restart.** A round claims a batch
  with an atomic MongoDB update (its lease, ``CHATQ_BATCHES__LEASE_S``) and releases
  it at the round's end; a process that died leaves a lease that lapses, and another
  takes the batch over from what MongoDB holds.
- **Each line makes at most one job.** A line is admitted with an ``Idempotency-Key``
  of its own (:func:`api.batches.line_work`): fed again after a crash between the
  admit and the line's ``queued`` write, it gets the same job back.
- **A batch never floods its queue.** At most ``MAX_WAITING`` of its lines are queued
  or running at once, and none is fed while the queue holds ``QUEUE_SHARE`` of
  ``CHATQ_API__MAX_QUEUE_DEPTH`` waiting jobs: the rest is interactive callers' room.
  Its jobs are ``batch`` priority, so a waiting interactive job starts first.
- **Each result is written once** (:meth:`api.batches.BatchStore.done` is conditional
  on the line's state), whatever the number of deliveries of its job.
"""

from __future__ import annotations

import asyncio
import json
import logging
import secrets
import time
from collections.abc import Coroutine
from concurrent.futures import Future
from typing import Any

from pymongo import ReturnDocument
from pymongo.errors import PyMongoError
from redis.exceptions import RedisError

from api import admission, jobs
from api import webhooks as api_webhooks
from api.admission import admit
from api.batches import MAX_ERRORS, BatchStore, LineError, Validation, line_work, validate
from api.errors import openai_body
from api.files import FileStore
from api.openai_wire import BatchRoute
from api.ratelimits import RateLimited
from api.services import Services
from shared.errors import (
    ChatqError,
    IdempotencyConflict,
    InvalidRequest,
    JobFailed,
    NotFound,
    QueueFull,
    Unavailable,
)
from shared.lifecycle import JobRecord
from shared.periodic import Periodic
from shared.schemas import JobStatus

log = logging.getLogger(__name__)

MAX_BATCHES_PER_ROUND = 32
PURGE_EVERY_S = 60.0


class LeaseLost(Exception):
    """Another process took the batch over (this one's lease lapsed mid-step)."""


def result_line(line: dict[str, Any], response: dict[str, Any] | None = None,
                error: dict[str, Any] | None = None) -> dict[str, Any]:
    """A line of the output or error file, in OpenAI's shape."""
    return {"id": "batch_req_" + secrets.token_urlsafe(12), "custom_id": line["custom_id"],
            "response": response, "error": error}


def refused(exc: ChatqError, request_id: str | None) -> dict[str, Any]:
    """A response as the route would have answered the refusal."""
    status = 400 if isinstance(exc, InvalidRequest) else exc.status
    return {"status_code": status, "request_id": request_id, "body": openai_body(exc)}


def event_body(batch_id: str, status: str, now: float) -> str:
    """OpenAI's webhook event for a batch that ended."""
    return json.dumps({"id": f"evt_{batch_id}_{status}", "object": "event",
                       "type": f"batch.{status}", "created_at": int(now),
                       "data": {"id": batch_id}})


class BatchFeeder:
    """One process's feeder (see the module's docstring)."""

    def __init__(self, svc: Services, routes: dict[str, BatchRoute]) -> None:
        self.svc = svc
        self.routes = routes
        self.store = BatchStore(svc.mongo, svc.settings.mongo_db)
        self.files: FileStore = svc.files
        self.limits = svc.settings.batches
        self.owner = secrets.token_hex(8)
        self.purged_at = 0.0
        self.indexed = False

    async def round(self) -> int:
        """Move every batch no other process holds one step on; how many."""
        if not self.indexed:
            await self.store.ensure_indexes()
            await self.files.ensure_indexes()
            self.indexed = True
        started, moved = time.time(), 0
        while moved < MAX_BATCHES_PER_ROUND:
            doc = await self.store.claim(self.owner, self.limits.lease_s, started)
            if doc is None:
                break
            moved += 1
            try:
                await self.advance(doc)
            except LeaseLost:
                log.warning("batch taken over by another process mid-step",
                            extra={"batch_id": doc["_id"]})
            finally:
                await self.store.release(doc["_id"], self.owner)
        if started - self.purged_at > PURGE_EVERY_S:
            self.purged_at = started
            await self.files.purge(started)
        return moved

    async def advance(self, doc: dict[str, Any]) -> None:
        status = doc["status"]
        if status == "validating":
            await self.validate(doc)
            return
        if status == "finalizing":
            await self.finalize(doc)
            return
        if status == "in_progress" and not doc.get("ending") and time.time() >= doc[
                "expires_at"]:
            doc = await self.store.batches.find_one_and_update(
                {"_id": doc["_id"], "status": "in_progress"}, {"$set": {"ending": "expired"}},
                return_document=ReturnDocument.AFTER) or doc
        ending = doc.get("ending")
        await self.collect(doc, ending)
        if ending:
            await self.wind_down(doc, ending)
        else:
            await self.feed(doc)
        batch_id = doc["_id"]
        if await self.store.count(batch_id, "pending") or await self.store.count(
                batch_id, "queued"):
            return
        if ending:
            await self.finalize(doc)
        elif (moved := await self.store.move(batch_id, ("in_progress",), "finalizing")):
            await self.finalize(moved)

    # --- validating -------------------------------------------------------------

    async def validate(self, doc: dict[str, Any]) -> None:
        batch_id, route = doc["_id"], self.routes[doc["endpoint"]]
        await self.store.drop_lines(batch_id)  # an interrupted validation's
        try:
            checked = await validate(
                self.svc, route, batch_id, self.files.lines(doc["tenant"], doc["input_file_id"]),
                keep=lambda lines: self.store.put_lines(batch_id, lines),
                progress=lambda: self.renew(batch_id))
        except NotFound:
            checked = Validation(errors=[LineError(None, "invalid_file", "the input file "
                                                   f"{doc['input_file_id']} was deleted")])
        if checked.errors:
            await self.store.drop_lines(batch_id)
            errors = [e.dump() for e in checked.errors[:MAX_ERRORS]]
            moved = await self.store.move(batch_id, ("validating",), "failed", errors=errors,
                                          counts={"total": 0, "completed": 0, "failed": 0})
            if moved:
                await self.ended(moved, "failed")
            return
        counts = {"total": checked.lines, "completed": 0, "failed": 0}
        if not await self.store.move(batch_id, ("validating",), "in_progress", counts=counts,
                                     model=checked.model):
            # cancelled while validating: its lines end batch_cancelled
            await self.store.batches.update_one({"_id": batch_id}, {"$set": {"counts": counts}})
        log.info("batch validated", extra={"batch_id": batch_id, "lines": checked.lines})

    async def renew(self, batch_id: str) -> None:
        """Keep the lease through a long step; stop the step if another process has it."""
        if not await self.store.renew(batch_id, self.owner, self.limits.lease_s):
            raise LeaseLost(batch_id)

    # --- in progress ------------------------------------------------------------

    async def feed(self, doc: dict[str, Any]) -> None:
        """Admit pending lines while the batch and its queue have room."""
        batch_id, tenant = doc["_id"], doc["tenant"]
        route = self.routes[doc["endpoint"]]
        room = self.limits.max_waiting - await self.store.count(batch_id, "queued")
        if room <= 0:
            return
        for line in await self.store.of_state(batch_id, "pending", room):
            try:
                work = line_work(route, line["body"], batch_id, line["n"])
                if not await self.has_room(admission.queue_of(self.svc, work)):
                    return
                record = (await admit(self.svc, work, tenant)).record
            except (Unavailable, QueueFull, RateLimited, IdempotencyConflict, RedisError):
                # passing (no worker, a full queue or the tenant's share of it, a rate limit,
                # Redis away, or this line's admit by a process that died still holding its
                # key): the line waits for a round
                return
            except ChatqError as exc:
                await self.write(doc, line, "pending", error_response=refused(exc, None))
                continue
            await self.store.queued(line["_id"], record.id)

    async def has_room(self, queue: str) -> bool:
        api = self.svc.settings.api
        waiting = await self.svc.redis.zcard(self.svc.keys.waiting(queue))
        return waiting < api.max_queue_depth * self.limits.queue_share

    async def collect(self, doc: dict[str, Any], ending: str | None) -> None:
        """Write the result of each queued line whose job has ended."""
        for line in await self.store.of_state(doc["_id"], "queued"):
            loaded = await self.svc.jobs(self.svc.jobs.ops.load(line["job_id"]))
            record = loaded.record
            if record is None:
                await self.write(doc, line, "queued", error={
                    "code": "job_lost", "message": "the line's job record expired before its "
                                                   "result was collected"})
            elif record.status.terminal:
                await self.collect_one(doc, line, record, loaded.output, ending)

    async def collect_one(self, doc: dict[str, Any], line: dict[str, Any], record: JobRecord,
                          output: str, ending: str | None) -> None:
        if record.status in (JobStatus.cancelled, JobStatus.expired):
            why = ending or ("expired" if record.status is JobStatus.expired else "cancelled")
            await self.write(doc, line, "queued", error=self.ended_error(why))
            return
        route = self.routes[doc["endpoint"]]
        try:
            if record.status is JobStatus.failed:
                raise JobFailed(record.id, record.error)
            body = await route.answer(self.svc, route.request.model_validate(line["body"]),
                                      record, output)
        except ChatqError as exc:
            await self.write(doc, line, "queued", error_response=refused(exc, record.id))
            return
        await self.write(doc, line, "queued", response={
            "status_code": 200, "request_id": record.id, "body": body})

    @staticmethod
    def ended_error(why: str) -> dict[str, str]:
        words = {"expired": "the batch's completion window ended before this request ran",
                 "cancelled": "the batch was cancelled before this request finished"}
        return {"code": f"batch_{why}", "message": words[why]}

    async def write(self, doc: dict[str, Any], line: dict[str, Any], frm: str, *,
                    response: dict[str, Any] | None = None,
                    error_response: dict[str, Any] | None = None,
                    error: dict[str, Any] | None = None) -> None:
        """The line's result, once: to the output file (a 200) or the error file."""
        outcome = "completed" if response is not None else "failed"
        if error is not None and error["code"] in ("batch_expired", "batch_cancelled"):
            outcome = error["code"].removeprefix("batch_")
        result = result_line(line, response or error_response, error)
        if await self.store.done(doc["_id"], line["_id"], frm, result, outcome):
            await self.count(f"lines:{outcome}")

    async def wind_down(self, doc: dict[str, Any], why: str) -> None:
        """Cancelling or expired: stop the lines' jobs, end the lines never fed."""
        for line in await self.store.of_state(doc["_id"], "queued"):
            record = (await self.svc.jobs(self.svc.jobs.ops.load(line["job_id"]))).record
            if record is not None and not record.status.terminal:
                await jobs.cancel(self.svc, record)
        for line in await self.store.of_state(doc["_id"], "pending"):
            await self.write(doc, line, "pending", error=self.ended_error(why))

    # --- the end ----------------------------------------------------------------

    async def finalize(self, doc: dict[str, Any]) -> None:
        """Write the output and error files from the lines' results, then end the batch
        (written again from the start if a crash interrupted it: the file ids are the
        batch's own)."""
        batch_id, tenant = doc["_id"], doc["tenant"]
        final = {"finalizing": "completed", "cancelling": "cancelled"}.get(
            doc["status"], doc.get("ending") or "completed")
        expires = time.time() + doc.get("output_expires_after_s",
                                         self.limits.output_expires_after_s)
        files: dict[str, str | None] = {}
        for key, completed, tag in (("output_file_id", True, "output"),
                                    ("error_file_id", False, "error")):
            file_id = f"file-{tag}-{batch_id.removeprefix('batch_')}"
            written = await self.files.put(
                tenant, file_id, f"{batch_id}_{tag}.jsonl", purpose="batch_output",
                chunks=self.store.results(batch_id, completed=completed), expires_at=expires)
            files[key] = file_id if written else None
        moved = await self.store.move(batch_id, (doc["status"],), final, **files)
        if moved:
            await self.ended(moved, final)

    async def ended(self, doc: dict[str, Any], status: str) -> None:
        """A batch's end, once: its counter, its log line, its webhook."""
        await self.count(f"batches:{status}")
        log.info("batch ended", extra={"batch_id": doc["_id"], "status": status,
                                       "tenant": doc["tenant"]})
        if doc.get("webhook"):
            await api_webhooks.register_event(
                self.svc, doc["_id"], doc["tenant"], doc["webhook"], f"batch.{status}",
                event_body(doc["_id"], status, time.time()))

    async def count(self, name: str) -> None:
        try:
            await self.svc.redis.hincrby(self.svc.keys.batch_stats(), name, 1)
        except RedisError:
            log.warning("batch counter not raised: Redis unreachable", extra={"counter": name})


class BatchLoop(Periodic):
    """The feeder's rounds, from the project's loop helper: the thread hands each round to
    the API's event loop (where the async clients live) and waits for it."""

    def __init__(self, feeder: BatchFeeder, loop: asyncio.AbstractEventLoop,
                 interval_s: float) -> None:
        super().__init__("chatq-batch-feeder", interval_s, self.tick,
                         expected=(PyMongoError, RedisError, Unavailable),
                         expected_message="batch round skipped", logger=log)
        self.feeder = feeder
        self.loop = loop
        self.current: Future[int] | None = None

    def tick(self) -> None:
        """One round, waited for to its end (never two rounds of one process at once);
        :meth:`stop` cancels it."""
        coro: Coroutine[Any, Any, int] = self.feeder.round()
        self.current = asyncio.run_coroutine_threadsafe(coro, self.loop)
        self.current.result()

    def stop(self, timeout: float | None = None) -> None:
        super().stop(timeout)
        if self.current is not None:
            self.current.cancel()

