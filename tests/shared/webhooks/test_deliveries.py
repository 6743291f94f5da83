"""Retry backoff of one delivery."""

from __future__ import annotations

from shared.settings import WebhookSettings
from shared.webhooks import (
    Attempt,
    Delivery,
    advance,
)

# --- retries -----------------------------------------------------------------------


def test_backoff_doubles_up_to_its_cap_and_gives_up_after_the_period() -> None:
    hooks = WebhookSettings(backoff_s=1, backoff_max_s=4, retry_period_s=20)
    d = Delivery(event="completed", webhook_id="msg_j_completed", registered_at=100.0)
    waits, now = [], 100.0
    while d.status == "pending":
        d = advance(d, Attempt(500, "answered 500"), now, hooks)
        if d.next_attempt_at is not None:
            waits.append(d.next_attempt_at - now)
            now = d.next_attempt_at
    assert waits == [1, 2, 4, 4, 4, 4]  # next would fall past 100 + 20
    assert (d.status, d.attempts, d.last_status) == ("failed", 7, 500)


def test_a_2xx_delivers_and_a_refused_target_is_not_retried() -> None:
    hooks = WebhookSettings()
    d = Delivery(event="start", webhook_id="msg_j_start", registered_at=0.0)
    failed = advance(d, Attempt(None, "no answer within 10 s"), 1.0, hooks)
    assert failed.status == "pending" and failed.next_attempt_at == 1.0 + hooks.backoff_s
    done = advance(failed, Attempt(204), 7.0, hooks)
    assert (done.status, done.attempts, done.delivered_at, done.last_error) == (
        "delivered", 2, 7.0, None)
    refused = advance(d, Attempt(None, "target refused", retry=False), 1.0, hooks)
    assert refused.status == "failed" and refused.next_attempt_at is None
