"""Reading the transition log with acknowledgement (a Redis Stream consumer group).

Every state change of every job is appended to ``Keys.transitions()`` by the
script that makes it (see :mod:`shared.lifecycle`). A consumer (webhook
delivery, metrics...) reads it through a consumer group: an entry it read but
did not acknowledge (its process died) is claimed again by a member of the
group after ``claim_idle_s``, so nothing is missed; a consumer must therefore
be idempotent per entry id.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any

import redis

from shared.events import Transition
from shared.keys import Keys

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Entry:
    id: str  # the stream entry id (acknowledge it when handled)
    transition: Transition


class TransitionReader:
    def __init__(self, client: redis.Redis, keys: Keys, group: str, consumer: str,
                 claim_idle_s: float = 30.0) -> None:
        self.redis = client
        self.stream = keys.transitions()
        self.group = group
        self.consumer = consumer
        self.claim_idle_ms = int(claim_idle_s * 1000)

    def ensure_group(self, start: str = "$") -> None:
        """Create the group (reading from ``start``: ``$`` new entries, ``0`` all kept)."""
        try:
            self.redis.xgroup_create(self.stream, self.group, id=start, mkstream=True)
        except redis.ResponseError as exc:
            if "BUSYGROUP" not in str(exc):
                raise

    def read(self, count: int = 100, block_s: float = 1.0) -> list[Entry]:
        """Entries abandoned by a member of the group first, then new ones. A Redis that
        came back without the group (restarted without persistence, a failover to a
        replica that lacked it, a flush) gets it again, reading all the stream holds: a
        consumer is idempotent per entry, and nothing written since is missed."""
        try:
            return self._read(count, block_s)
        except redis.ResponseError as exc:
            if "NOGROUP" not in str(exc):
                raise
            log.warning("transition log's consumer group is gone; making it again",
                        extra={"group": self.group})
            self.ensure_group(start="0")
            return self._read(count, block_s)

    def _read(self, count: int, block_s: float) -> list[Entry]:
        autoclaim: Any = self.redis.xautoclaim(
            self.stream, self.group, self.consumer, self.claim_idle_ms, "0-0", count=count)
        if autoclaim[1]:
            return self._entries(autoclaim[1])
        reply: Any = self.redis.xreadgroup(self.group, self.consumer, {self.stream: ">"},
                                           count=count, block=int(block_s * 1000))
        return self._entries(reply[0][1] if reply else [])

    def ack(self, *entry_ids: str) -> None:
        if entry_ids:
            self.redis.xack(self.stream, self.group, *entry_ids)

    @staticmethod
    def _entries(raw: list[tuple[str, dict[str, str]]]) -> list[Entry]:
        out = []
        for entry_id, fields in raw:
            if fields:  # an entry trimmed away since it was read comes back empty
                out.append(Entry(entry_id, Transition.from_fields(fields)))
        return out
