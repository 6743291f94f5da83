"""The cancel listener's other channels, on a real Redis: a deleted conversation
reaches its handler; a handler that raises does not stop the listener."""

from __future__ import annotations

import json
import queue

import redis

from shared.keys import Keys
from workers.cancels import CancelListener


def test_other_channels_reach_their_handler_and_a_failing_one_is_survived(
        redis_client: redis.Redis) -> None:
    keys = Keys()
    got: queue.SimpleQueue[str] = queue.SimpleQueue()

    def handler(text: str) -> None:
        body = json.loads(text)  # the first message is not JSON: it raises
        got.put(body["conversation_id"])

    listener = CancelListener(redis_client, keys.cancels(),
                              others={keys.conversation_deletes(): handler})
    listener.start()
    try:
        assert listener.subscribed.wait(30)
        redis_client.publish(keys.conversation_deletes(), "not json")
        redis_client.publish(keys.conversation_deletes(),
                             json.dumps({"tenant": "t", "conversation_id": "c1"}))
        assert got.get(timeout=30) == "c1"
        assert listener.is_alive()
    finally:
        listener.stop()
