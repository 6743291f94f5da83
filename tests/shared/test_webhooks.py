"""Webhook rules: Standard Webhooks signatures, the SSRF guard, retry backoff, and the
delivery-state scripts (once per event, one delivery per job in flight, in order)."""

from __future__ import annotations

import ipaddress
import time

import pytest
import redis
from pydantic import SecretStr

from ops.webhook_receiver import verify
from shared.errors import UnsafeWebhook
from shared.lifecycle import JobRecord
from shared.settings import ApiSettings, Settings, WebhookSettings
from shared.webhooks import (
    EVENTS,
    PICKUP_LEASE_S,
    Attempt,
    Delivery,
    HookStore,
    TargetPolicy,
    advance,
    check_addresses,
    deliveries,
    new_secret,
    refused_address,
    resolve,
    sign,
    target,
    tenant_secret,
)
from tests.shared.test_lifecycle import CFG, record

# The test vector published with the Standard Webhooks reference libraries.
V_SECRET = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"
V_ID, V_TIMESTAMP, V_BODY = "msg_p5jXN8AQM9LWM0D4loKWxJek", 1614265330, b'{"test": 2432232314}'
V_SIGNATURE = "v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE="

PRODUCTION = TargetPolicy.of(WebhookSettings(), production=True)
DEVELOPMENT = TargetPolicy.of(WebhookSettings(), production=False)


# --- signing -----------------------------------------------------------------------


def test_signature_matches_the_standard_webhooks_test_vector() -> None:
    assert sign(V_SECRET, V_ID, V_TIMESTAMP, V_BODY) == V_SIGNATURE


def test_the_receiver_example_verifies_what_chatq_signs() -> None:
    secret = new_secret()
    assert secret.startswith("whsec_") and len(secret) > 40
    body, now = b'{"id": "job_x", "status": "succeeded"}', int(time.time())
    headers = {"webhook-id": "msg_1", "webhook-timestamp": str(now),
               "webhook-signature": sign(secret, "msg_1", now, body)}
    assert verify(secret, headers, body)
    assert not verify(secret, headers, body + b" ")  # a changed body
    assert not verify(new_secret(), headers, body)  # another tenant's secret
    assert not verify(secret, {**headers, "webhook-id": "msg_2"}, body)
    assert not verify(secret, headers, body, now=now + 3600)  # a replay, much later
    rotated = {**headers, "webhook-signature": "v1,bm9wZQ== " + headers["webhook-signature"]}
    assert verify(secret, rotated, body)
    vector = {"webhook-id": V_ID, "webhook-timestamp": str(V_TIMESTAMP),
              "webhook-signature": V_SIGNATURE}
    assert verify(V_SECRET, vector, V_BODY, now=V_TIMESTAMP)


def test_a_tenant_secret_is_made_once(redis_client: redis.Redis) -> None:
    first = tenant_secret(redis_client, CFG.keys, "acme")
    assert tenant_secret(redis_client, CFG.keys, "acme") == first
    assert tenant_secret(redis_client, CFG.keys, "other") != first


# --- the SSRF guard ------------------------------------------------------------------


@pytest.mark.parametrize("address", [
    "127.0.0.1", "127.8.9.10", "10.1.2.3", "172.16.0.1", "172.31.255.255", "192.168.1.1",
    "169.254.169.254", "100.64.0.1", "0.0.0.0", "224.0.0.1", "255.255.255.255",
    "198.18.0.1", "::1", "::", "fe80::1", "fc00::1", "fd12:3456::1", "::ffff:127.0.0.1",
    "::ffff:10.0.0.1", "2002:7f00:1::", "ff02::1",
])
def test_non_public_addresses_are_refused(address: str) -> None:
    assert refused_address(ipaddress.ip_address(address))


@pytest.mark.parametrize("address", [
    "64:ff9b::7f00:1",  # NAT64 (well-known prefix) of 127.0.0.1
    "64:ff9b::a9fe:a9fe",  # ... of the metadata service 169.254.169.254
    "64:ff9b::a00:1",  # ... of 10.0.0.1
    "64:ff9b:1::7f00:1", "64:ff9b:1:7f00:1::",  # local-use NAT64: anywhere in it
    "::7f00:1", "::808:808",  # IPv4-compatible (deprecated): anywhere in it
    "::ffff:0:7f00:1",  # IPv4-translated (SIIT) 127.0.0.1
    "2002:a9fe:a9fe::1",  # 6to4 of 169.254.169.254
    "2001:0:4136:e378:8000:63bf:80ff:fffe",  # Teredo, client 127.0.0.1
])
def test_ipv6_forms_of_private_ipv4_addresses_are_refused(address: str) -> None:
    """Each reaches a private IPv4 address through a translator or a tunnel."""
    assert refused_address(ipaddress.ip_address(address))
    with pytest.raises(UnsafeWebhook):
        check_addresses("example.com", [ipaddress.ip_address(address)], PRODUCTION)


def test_nat64_of_a_public_address_is_allowed() -> None:
    assert not refused_address(ipaddress.ip_address("64:ff9b::808:808"))  # 8.8.8.8
    assert not refused_address(ipaddress.ip_address("::ffff:0:808:808"))


def test_development_with_api_keys_refuses_private_targets_unless_allowed() -> None:
    """A development stack with API keys serves tenants: one of them must not reach the
    host's loopback or the metadata service through a webhook."""
    loopback = [ipaddress.ip_address("127.0.0.1")]
    tenants = TargetPolicy.of(WebhookSettings(), production=False, tenants=True)
    assert not tenants.https_only
    with pytest.raises(UnsafeWebhook):
        check_addresses("localhost", loopback, tenants)
    allowed = TargetPolicy.of(WebhookSettings(allow_private_targets=True), production=False,
                              tenants=True)
    check_addresses("localhost", loopback, allowed)
    check_addresses("localhost", loopback, DEVELOPMENT)  # no keys: one trusted user
    ignored = TargetPolicy.of(WebhookSettings(allow_private_targets=True), production=True,
                              tenants=True)
    with pytest.raises(UnsafeWebhook):
        check_addresses("localhost", loopback, ignored)  # production: allow_hosts only


def test_the_policy_reads_api_keys_from_settings() -> None:
    dev = Settings(api=ApiSettings(keys=SecretStr("k=acme")))
    assert not TargetPolicy.from_settings(dev).any_address
    assert TargetPolicy.from_settings(Settings()).any_address
    opened = Settings(api=ApiSettings(keys=SecretStr("k=acme")),
                      webhooks=WebhookSettings(allow_private_targets=True))
    assert TargetPolicy.from_settings(opened).any_address


@pytest.mark.parametrize("address", ["8.8.8.8", "1.1.1.1", "93.184.216.34",
                                     "2606:4700:4700::1111"])
def test_public_addresses_are_allowed(address: str) -> None:
    assert not refused_address(ipaddress.ip_address(address))
    check_addresses("example.com", [ipaddress.ip_address(address)], PRODUCTION)


def test_production_wants_https_and_development_takes_http() -> None:
    with pytest.raises(UnsafeWebhook, match="https"):
        target("http://example.com/hook", PRODUCTION)
    assert target("https://Example.COM./hook", PRODUCTION) == ("example.com", 443)
    assert target("http://127.0.0.1:8080/hook", DEVELOPMENT) == ("127.0.0.1", 8080)
    with pytest.raises(UnsafeWebhook):
        target("ftp://example.com/", DEVELOPMENT)


def test_one_private_address_among_public_ones_refuses_the_host() -> None:
    mixed = [ipaddress.ip_address("8.8.8.8"), ipaddress.ip_address("10.0.0.7")]
    with pytest.raises(UnsafeWebhook, match=r"10\.0\.0\.7") as refused:
        check_addresses("rebind.example", mixed, PRODUCTION)
    assert refused.value.status == 422
    assert refused.value.details == [{"field": "webhook", "message": refused.value.reason,
                                      "type": "unsafe_webhook"}]
    check_addresses("rebind.example", mixed, DEVELOPMENT)  # development allows any address


def test_numeric_host_tricks_resolve_to_what_they_are() -> None:
    # 2130706433 and 0x7f.1 are 127.0.0.1 to the resolver: checked after resolution.
    for host in ("2130706433", "127.1", "localhost"):
        with pytest.raises(UnsafeWebhook):
            check_addresses(host, resolve(host, 443), PRODUCTION)


def test_the_allow_list_names_hosts_and_networks() -> None:
    policy = TargetPolicy.of(WebhookSettings(allow_hosts=["hooks.internal", "10.20.0.0/16"]),
                             production=True)
    private = [ipaddress.ip_address("10.99.0.1")]
    check_addresses("hooks.internal", private, policy)  # by name
    with pytest.raises(UnsafeWebhook):
        check_addresses("other.internal", private, policy)
    check_addresses("other.internal", [ipaddress.ip_address("10.20.3.4")], policy)  # network
    with pytest.raises(UnsafeWebhook):
        check_addresses("other.internal", [ipaddress.ip_address("10.21.3.4")], policy)


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
