"""Cancel requests (and other news) pushed to the worker.

The API's cancel of a running job sets the job's cancel flag and publishes its id
on the cancel channel (:meth:`shared.keys.Keys.cancels`). This listener stops the
named job's generation at once, before its next token, however long the emitter
coalesces its writes. The flag stays the fallback: each write of the job's tokens
reads it, so a message missed while the listener reconnects costs time, not the
cancel.

The same subscription carries the worker's other channels (``others``: channel ->
handler of each message's text), such as deleted conversations
(:meth:`shared.keys.Keys.conversation_deletes`) for the prompt cache. A handler that
raises is logged; the listener goes on.
"""

from __future__ import annotations

import contextlib
import logging
import threading
from collections.abc import Callable

import redis

from shared.periodic import Periodic
from workers.engine import Generation

log = logging.getLogger(__name__)


class CancelListener(Periodic):
    """Listens on the cancel channel (one round: until the connection breaks, then it
    subscribes again after ``retry_s``)."""

    def __init__(self, client: redis.Redis, channel: str, retry_s: float = 1.0,
                 others: dict[str, Callable[[str], None]] | None = None) -> None:
        # a closed socket is not always a RedisError
        super().__init__("chatq-cancels", 0, self.listen, retry_s=retry_s,
                         expected=(Exception,),
                         expected_message="cancel channel lost; the cancel flag still stops jobs",
                         logger=log)
        self.redis = client
        self.channel = channel
        self.others = dict(others or {})
        self._running: dict[str, Generation] = {}
        self._lock = threading.Lock()
        self.subscribed = threading.Event()  # set while the channel is listened to

    def watch(self, job_id: str, generation: Generation) -> None:
        with self._lock:
            self._running[job_id] = generation

    def forget(self, job_id: str) -> None:
        with self._lock:
            self._running.pop(job_id, None)

    def stop_job(self, job_id: str) -> bool:
        """Cancel the job's generation if it runs here; False when it does not."""
        with self._lock:
            generation = self._running.get(job_id)
        if generation is None:
            return False
        generation.cancel()
        log.info("cancel request: generation stopped", extra={"job_id": job_id})
        return True

    def listen(self) -> None:
        """Stop the jobs named on the channel, until stopped or the connection breaks."""
        pubsub = self.redis.pubsub(ignore_subscribe_messages=True)
        try:
            pubsub.subscribe(self.channel, *self.others)
            self.subscribed.set()
            while not self.stopping.is_set():
                message = pubsub.get_message(timeout=1.0)
                if message is not None and message["type"] == "message":
                    self._on_message(_text(message["channel"]), _text(message["data"]))
        finally:
            self.subscribed.clear()
            with contextlib.suppress(Exception):  # closing what already broke
                pubsub.close()

    def _on_message(self, channel: str, text: str) -> None:
        if channel == self.channel:
            self.stop_job(text)
            return
        try:
            self.others[channel](text)
        except Exception:
            log.exception("channel message not handled", extra={"channel": channel})

    def stop(self, timeout: float | None = 3.0) -> None:
        """Stop listening; returns once the thread is done (or after ``timeout``), so
        the Redis client can be closed after it."""
        super().stop(timeout)


def _text(value: object) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)
