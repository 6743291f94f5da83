"""Writing a finished job's turn to its conversation, and the outbox for when MongoDB is down.

A job's answer must not depend on MongoDB: when the write fails, the turn is
pushed to a Redis list (``Keys.outbox``) and the job finishes with
``persisted: false``. The :class:`OutboxDrainer` thread in every worker child
retries the oldest entries until MongoDB takes them, then flips the job's
``persisted`` to true. Writes are idempotent (see :mod:`shared.conversations`),
so an entry written twice (two drainers, a crash between write and removal)
still lands once.
"""

from __future__ import annotations

import json
import logging

import redis
from bson.errors import InvalidDocument
from pymongo.errors import DocumentTooLarge, PyMongoError

from shared.conversations import TurnWrite, WorkerConversationStore
from shared.lifecycle import BlockingJobs
from shared.periodic import Periodic

log = logging.getLogger(__name__)

# Errors retrying cannot fix: the entry goes to the dead list instead of blocking the outbox.
PERMANENT = (InvalidDocument, DocumentTooLarge, ValueError, TypeError)


class Persister:
    def __init__(self, store: WorkerConversationStore, jobs: BlockingJobs) -> None:
        self.store = store
        self.jobs = jobs
        self.redis: redis.Redis = jobs.redis
        self.keys = jobs.keys

    def persist(self, write: TurnWrite) -> bool:
        """Write the turn now (True) or park it in the outbox (False).

        When parking, the job's ``persisted: false`` is set in the same step as
        the push (the ``park`` script), so a drainer that lands the entry right
        away always flips it to true afterwards (never the other way round).
        """
        ctx = {"job_id": write.job_id, "conversation_id": write.conversation_id}
        try:
            self.store.append(write)
            return True
        except PERMANENT as exc:
            log.error("conversation write refused; kept in the dead list",
                      extra={**ctx, "error": repr(exc)})
            self.jobs(self.jobs.ops.park(write.job_id, write.to_json(), dead=True))
        except PyMongoError as exc:
            log.warning("MongoDB unavailable; conversation write queued in the outbox",
                        extra={**ctx, "error": type(exc).__name__})
            self.jobs(self.jobs.ops.park(write.job_id, write.to_json()))
        return False

    def drain(self, batch: int = 100) -> int:
        """Write up to ``batch`` outbox entries, oldest first; stops while MongoDB is down.

        Returns how many landed.
        """
        landed = 0
        outbox = self.keys.outbox()
        while landed < batch:
            head = self.redis.lindex(outbox, 0)
            if head is None:
                break
            raw = str(head)
            try:
                write = TurnWrite.from_json(raw)
                self.store.append(write)
            except (*PERMANENT, json.JSONDecodeError) as exc:
                log.error("outbox entry refused; moved to the dead list",
                          extra={"error": repr(exc)})
                self.redis.rpush(self.keys.outbox_dead(), raw)
            except PyMongoError:
                break  # still down: try again on the next round
            else:
                self.jobs(self.jobs.ops.set_persisted(write.job_id))
                landed += 1
                log.info("outbox entry written", extra={"job_id": write.job_id,
                                                        "conversation_id": write.conversation_id})
            self.redis.lrem(outbox, 1, raw)
        return landed


class OutboxDrainer(Periodic):
    """Drains the outbox every ``interval`` seconds; creates the indexes once MongoDB answers."""

    def __init__(self, persister: Persister, interval: float) -> None:
        super().__init__("chatq-outbox", interval, self.tick,
                         expected=(PyMongoError, redis.RedisError),
                         expected_message="outbox round skipped",
                         expected_level=logging.DEBUG, logger=log)
        self.persister = persister
        self.indexed = False

    def tick(self) -> None:
        if not self.indexed:
            self.persister.store.ensure_indexes()
            self.indexed = True
        self.persister.drain()
