"""Prompt-cache affinity: a conversation's next turn goes to the worker that holds its
last one in its prompt cache, when that worker has a free slot.

With several workers on one queue, each turn of a conversation would land on whichever
worker takes the message first, and every worker would read the whole history again
(each keeps its own KV). So a worker that finishes a turn notes itself under the turn's
key (:func:`after_turn`, ``chatq:affinity:{queue}:{tenant}:{key}``, with a TTL); the API
looks the next turn's key up (:func:`next_turn`) and, when that worker beats and has a
free slot, sends the job's message to the worker's own queue (:func:`own_queue`, which
every worker consumes beside the shared one) instead of the shared queue. A job routed
so is listed in ``chatq:routed``; if its worker dies before taking it, the recovery
sweeper sends it again, under a new dispatch, to the shared queue. The affinity is a
hint: a missing, expired or dead worker's key sends the job to the shared queue, never
waits.

What identifies a conversation: its ``conversation_id`` when it has one (chatq's stored
conversations, the Responses API's chains); else, for a client that resends the whole
history (the OpenAI SDK), a digest of the messages up to the new turn, which equals the
digest of the previous turn's messages with its answer. Keys are per tenant and per queue:
one tenant's history can never route another's job.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Sequence
from typing import Any

OWN_QUEUE_SEP = ".worker."


def own_queue(queue: str, worker_id: str) -> str:
    """The queue only ``worker_id`` consumes, beside its shared ``queue``."""
    return f"{queue}{OWN_QUEUE_SEP}{worker_id}"


def _text(content: Any) -> str:
    if isinstance(content, str):
        return content
    if isinstance(content, list):  # content parts: their text, in order
        return "".join(str(p.get("text", "")) for p in content if isinstance(p, dict))
    return ""


def _digest(messages: Sequence[dict[str, Any]]) -> str:
    turns = [[str(m.get("role", "")), _text(m.get("content"))] for m in messages]
    data = json.dumps(turns, ensure_ascii=False, separators=(",", ":"))
    return "m:" + hashlib.sha256(data.encode("utf-8")).hexdigest()[:32]


def next_turn(messages: Sequence[dict[str, Any]], conversation_id: str | None,
              fresh: bool = False) -> str | None:
    """The key a new job's previous turn was noted under; None when it has none (a
    first turn). ``fresh``: the API made ``conversation_id`` for this job, so its
    messages are the whole conversation."""
    if conversation_id is not None and not fresh:
        return f"c:{conversation_id}"
    if len(messages) < 2 or messages[-1].get("role") not in ("user", "tool"):
        return None
    return _digest(messages[:-1])


def after_turn(messages: Sequence[dict[str, Any]], conversation_id: str | None,
               answer: str, fresh: bool = False) -> list[str]:
    """The keys a finished turn is noted under: what :func:`next_turn` gives its next
    turn, sent either way (by its conversation's id, or with the whole history)."""
    keys = [] if conversation_id is None else [f"c:{conversation_id}"]
    if conversation_id is None or fresh:
        keys.append(_digest([*messages, {"role": "assistant", "content": answer}]))
    return keys
