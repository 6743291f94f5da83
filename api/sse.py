"""Server-Sent Events framing, shared by every streaming route (the job event stream
and the OpenAI streams): one frame per event, comments to keep idle streams open,
and the headers that stop proxies from buffering them."""

from __future__ import annotations

import json
from typing import Any

SSE_HEADERS = {"Cache-Control": "no-cache", "X-Accel-Buffering": "no"}
KEEPALIVE = ": keep-alive\n\n"


def frame(event: str, data: Any, event_id: int | None = None) -> str:
    """A named event (``id:`` when it has a sequence number)."""
    head = f"id: {event_id}\n" if event_id is not None else ""
    return f"{head}event: {event}\ndata: {json.dumps(data, separators=(',', ':'))}\n\n"


def data(body: dict[str, Any]) -> str:
    """A data-only frame (what OpenAI's streams send)."""
    return f"data: {json.dumps(body, separators=(',', ':'))}\n\n"
