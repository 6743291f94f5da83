"""The delivery-state scripts: once per event, one delivery per job in flight, in order."""

from __future__ import annotations

import time

import pytest
import redis

from shared.lifecycle import JobRecord
from shared.settings import WebhookSettings
from shared.webhooks import (
    EVENTS,
    PICKUP_LEASE_S,
    Attempt,
    HookStore,
    advance,
    deliveries,
)
from tests.shared.test_lifecycle import CFG, record

# --- delivery state (the scripts) --------------------------------------------------------


@pytest.fixture
def store(redis_client: redis.Redis) -> HookStore:
    return HookStore(redis_client, CFG.keys, WebhookSettings(timeout_s=1), retention_s=60)


def hooked() -> JobRecord:
    return record(webhook="https://example.com/hook", webhook_events=list(EVENTS))


def test_an_event_registers_once_and_is_due_at_once(store: HookStore) -> None:
    rec, now = hooked(), time.time()
    assert store.register(rec, "start", '{"status": "running"}', now)
    assert not store.register(rec, "start", '{"status": "other"}', now)  # read twice
    [(job_id, token)] = store.claim(now)
    assert job_id == rec.id
    pending = store.begin(rec.id, token, now)
    assert pending is not None
    assert (pending.delivery.event, pending.body, pending.url, pending.tenant) == (
        "start", '{"status": "running"}', "https://example.com/hook", "acme")
    assert pending.delivery.webhook_id == f"msg_{rec.id}_start"


def test_a_job_has_one_delivery_in_flight_and_start_goes_first(store: HookStore) -> None:
    rec, now = hooked(), time.time()
    store.register(rec, "start", "s", now)
    [(_, token)] = store.claim(now)
    # completed is raised while start is being delivered: it waits its turn
    store.register(rec, "completed", "c", now)
    assert store.claim(now + 1) == []
    pending = store.begin(rec.id, token, now)
    assert pending is not None and pending.delivery.event == "start"
    done = advance(pending.delivery, Attempt(200), now, store.hooks)
    assert store.settle(rec.id, token, done, now)
    [(_, token2)] = store.claim(now)
    nxt = store.begin(rec.id, token2, now)
    assert nxt is not None and nxt.delivery.event == "completed"
    store.settle(rec.id, token2, advance(nxt.delivery, Attempt(200), now, store.hooks), now)
    assert store.claim(now + 3600) == []
    assert [(d.event, d.status, d.attempts) for d in deliveries(store.state(rec.id))] == [
        ("start", "delivered", 1), ("completed", "delivered", 1)]
    assert "body:start" not in store.state(rec.id)  # sent for good: the body is dropped


def test_a_failed_event_waits_for_its_retry_and_holds_back_the_next(store: HookStore) -> None:
    rec, now = hooked(), time.time()
    store.register(rec, "start", "s", now)
    store.register(rec, "completed", "c", now)
    [(_, token)] = store.claim(now)
    pending = store.begin(rec.id, token, now)
    assert pending is not None
    retry = advance(pending.delivery, Attempt(503, "answered 503"), now, store.hooks)
    store.settle(rec.id, token, retry, now)
    assert store.claim(now + store.hooks.backoff_s - 0.1) == []
    [(_, token)] = store.claim(now + store.hooks.backoff_s)
    again = store.begin(rec.id, token, now + store.hooks.backoff_s)
    assert again is not None and again.delivery.event == "start"
    assert again.delivery.attempts == 1 and again.body == "s"


def test_a_message_without_its_claim_does_nothing(store: HookStore) -> None:
    rec, now = hooked(), time.time()
    store.register(rec, "completed", "c", now)
    [(_, token)] = store.claim(now)
    first = store.begin(rec.id, token, now)
    assert first is not None
    assert store.begin(rec.id, "someone-else", now) is None  # one delivery in flight
    # its worker died: the claim lapses and the job is claimed (and sent) again
    later = now + store.run_lease_s + 1
    [(_, token2)] = store.claim(later)
    assert token2 != token
    assert not store.settle(rec.id, token, advance(first.delivery, Attempt(200), later,
                                                   store.hooks), later)  # too late: dropped
    assert store.begin(rec.id, token2, later) is not None


def test_the_first_message_of_a_sent_claim_wins(store: HookStore) -> None:
    rec, now = hooked(), time.time()
    store.register(rec, "completed", "c", now)
    [(_, old)] = store.claim(now)
    [(_, new)] = store.claim(now + PICKUP_LEASE_S + 1)  # the first message seemed lost
    assert store.begin(rec.id, old, now) is not None  # ...but arrived after all: it runs
    assert store.begin(rec.id, new, now) is None  # and the second finds it running


def test_a_job_whose_state_expired_leaves_the_schedule(
    store: HookStore, redis_client: redis.Redis,
) -> None:
    rec, now = hooked(), time.time()
    store.register(rec, "completed", "c", now)
    redis_client.delete(CFG.keys.hooks(rec.id))
    assert store.claim(now) == []
    assert redis_client.zcard(CFG.keys.hooks_due()) == 0
