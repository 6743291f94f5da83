"""Standard Webhooks signatures and the tenant secret."""

from __future__ import annotations

import time

import redis

from ops.webhook_receiver import verify
from shared.webhooks import (
    new_secret,
    sign,
    tenant_secret,
)
from tests.shared.test_lifecycle import CFG

# The test vector published with the Standard Webhooks reference libraries.
V_SECRET = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"
V_ID, V_TIMESTAMP, V_BODY = "msg_p5jXN8AQM9LWM0D4loKWxJek", 1614265330, b'{"test": 2432232314}'
V_SIGNATURE = "v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE="



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
